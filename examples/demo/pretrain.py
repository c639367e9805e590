"""Small pretrained components for the demo, made from the demo corpus: PART starts from a pretrained speech
encoder and a pretrained LLM, and none can be downloaded here.

- `train_tokenizer`: a byte-level BPE tokenizer on the corpus text (with the PART audio tokens).
- `pretrain_encoder`: a SenseVoice-style encoder (`fun_asr_nano_encoder`) trained with CTC on characters of the
  ASR training transcripts, saved as a standard transformers checkpoint (+ its feature extractor, CMVN fitted).
- `pretrain_llm`: a small Qwen2 causal LM trained on the text side (transcripts, translations, and `mt` pairs in
  the processor's own prompt format), saved as a standard transformers checkpoint with its tokenizer.

Users with a network pass hub ids to `from_pretrained_components` instead; these functions only stand in for them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import FunAsrNanoEncoderConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder

from modeling_part import PartFeatureExtractor, load_audio
from modeling_part.processing_part import DEFAULT_PROMPT_TEMPLATES, LANGUAGE_NAMES
from modeling_part.tiny import build_tokenizer


@dataclass
class EncoderSettings:
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 4
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100


@dataclass
class LLMSettings:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    max_length: int = 96


def _rows(split, task: str | None = None) -> list[dict]:
    columns = [c for c in ("task", "source_language", "target_language", "source_text", "text") if c in split.column_names]
    table = split.select_columns(columns).to_list()
    return [r for r in table if task is None or r["task"] == task]


def _linear_warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _train_loop(model: nn.Module, batches: Iterator, loss_fn, steps: int, lr: float, warmup: int, desc: str) -> list[float]:
    """AdamW with warm-up + cosine decay and gradient clipping; returns the per-step losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _linear_warmup_cosine(s, warmup, steps))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc)
    for _ in bar:
        loss = loss_fn(next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def _forever(items: Sequence, batch_size: int, seed: int) -> Iterator[list]:
    """Shuffled batches, epoch after epoch (the batch size is capped at the number of items)."""
    if not items:
        raise ValueError("No training items: the demo corpus split is empty for this pretraining step.")
    batch_size = min(batch_size, len(items))
    rng = random.Random(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [items[i] for i in order[start : start + batch_size]]


# ----------------------------------------------------------------------------------------------- tokenizer
def corpus_texts(train_split) -> list[str]:
    """Every text of the training split (transcripts, translations, MT sources)."""
    texts = []
    for row in _rows(train_split):
        texts.append(row["text"])
        if row.get("source_text"):
            texts.append(row["source_text"])
    return texts


def train_tokenizer(train_split, output_dir: str | Path, vocab_size: int = 4000):
    """A byte-level BPE tokenizer trained on the corpus text, saved to `output_dir`."""
    tokenizer = build_tokenizer(corpus_texts(train_split), vocab_size=vocab_size)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


# -------------------------------------------------------------------------------------------- speech encoder
class CTCModel(nn.Module):
    """A speech encoder with a linear CTC head over characters (the head is dropped after pretraining)."""

    def __init__(self, encoder: FunAsrNanoEncoder, vocab_size: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, vocab_size)

    def forward(self, features, mask, targets, target_lengths):
        hidden = self.encoder(input_features=features, input_features_mask=mask).last_hidden_state
        log_probs = F.log_softmax(self.head(hidden).float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(log_probs, targets, mask.sum(-1), target_lengths, blank=0, zero_infinity=True)


def pretrain_encoder(
    train_split, output_dir: str | Path, settings: EncoderSettings = EncoderSettings(), seed: int = 0
) -> dict:
    """Trains a SenseVoice-style encoder with CTC on the ASR training rows; saves it and its feature extractor."""
    torch.manual_seed(seed)
    started = time.time()
    asr = train_split.filter(lambda task: task == "asr", input_columns="task")
    waveforms = [load_audio(a, name=f"train asr row {i}") for i, a in enumerate(asr["audio"])]
    texts = asr["text"]
    feature_extractor = PartFeatureExtractor(front_end="sensevoice")
    feature_extractor.fit_cmvn(waveforms)
    features = [
        feature_extractor(w, return_tensors=None, padding=False)["input_features"][0]
        for w in tqdm(waveforms, desc="encoder features")
    ]
    characters = sorted({c for t in texts for c in t})
    char_ids = {c: i + 1 for i, c in enumerate(characters)}  # 0 is the CTC blank
    samples = [(np.asarray(f, dtype=np.float32), [char_ids[c] for c in t]) for f, t in zip(features, texts)]
    samples = [s for s in samples if len(s[1]) <= len(s[0])]  # CTC needs at least one frame per label

    config = FunAsrNanoEncoderConfig(
        hidden_size=settings.hidden_size,
        num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_timestamp_prediction_layers=0,
        hidden_dropout=0.1,
        attention_dropout=0.0,
    )
    model = CTCModel(FunAsrNanoEncoder(config), len(characters) + 1)

    def loss_fn(batch):
        lengths = [len(f) for f, _ in batch]
        feats = torch.zeros(len(batch), max(lengths), batch[0][0].shape[1])
        mask = torch.zeros(len(batch), max(lengths), dtype=torch.long)
        for i, (f, _) in enumerate(batch):
            feats[i, : len(f)] = torch.from_numpy(f)
            mask[i, : len(f)] = 1
        targets = torch.tensor([c for _, t in batch for c in t])
        target_lengths = torch.tensor([len(t) for _, t in batch])
        return model(feats, mask, targets, target_lengths)

    losses = _train_loop(
        model, _forever(samples, settings.batch_size, seed), loss_fn, settings.steps, settings.learning_rate,
        settings.warmup_steps, "pretraining the speech encoder (CTC)",
    )
    model.encoder.save_pretrained(output_dir)
    feature_extractor.save_pretrained(output_dir)
    return {"ctc_loss_first": float(np.mean(losses[:20])), "ctc_loss_last": float(np.mean(losses[-20:])),
            "utterances": len(samples), "seconds": time.time() - started}


# ------------------------------------------------------------------------------------------------------ LLM
def llm_training_texts(train_split) -> list[str]:
    """Monolingual text (every transcript and source) plus translation pairs in the processor's `mt` prompt
    format, so the LLM knows the languages and how a translation answer follows the instruction."""
    texts = []
    for row in _rows(train_split):
        if row["task"] == "asr":
            texts.append(row["text"])
        elif row["task"] == "mt":
            instruction = DEFAULT_PROMPT_TEMPLATES["mt"].format(
                source_language=LANGUAGE_NAMES[row["source_language"]],
                target_language=LANGUAGE_NAMES[row["target_language"]],
                source_text=row["source_text"],
            )
            texts.append(f"{instruction}\n{row['text']}")
    return texts


def pretrain_llm(
    train_split, tokenizer, output_dir: str | Path, settings: LLMSettings = LLMSettings(), seed: int = 0
) -> dict:
    """Trains a small Qwen2 causal LM on the corpus text; saves it with the tokenizer."""
    torch.manual_seed(seed)
    started = time.time()
    eos = tokenizer.eos_token_id
    sequences = [
        tokenizer(t, add_special_tokens=False)["input_ids"][: settings.max_length - 1] + [eos]
        for t in llm_training_texts(train_split)
    ]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=max(1, settings.num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)

    def loss_fn(batch):
        length = max(len(s) for s in batch)
        ids = torch.full((len(batch), length), tokenizer.pad_token_id)
        labels = torch.full((len(batch), length), -100)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    losses = _train_loop(
        model, _forever(sequences, settings.batch_size, seed), loss_fn, settings.steps, settings.learning_rate,
        settings.warmup_steps, "pretraining the LLM",
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"lm_loss_first": float(np.mean(losses[:20])), "lm_loss_last": float(np.mean(losses[-20:])),
            "sequences": len(sequences), "seconds": time.time() - started}


__all__ = ["EncoderSettings", "LLMSettings", "pretrain_encoder", "pretrain_llm", "train_tokenizer"]
