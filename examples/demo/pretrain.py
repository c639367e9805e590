"""The demo's pretrained components: PART starts from a pretrained speech encoder and a pretrained LLM, and none can be
downloaded here, so the demo makes small stand-ins with the two properties PART relies on.

- `train_tokenizer`: a byte-level BPE tokenizer on the demo's text (with the PART audio tokens), every Han character
  a token of its own by default.
- `pretrain_encoder`: a SenseVoice-style encoder (`fun_asr_nano_encoder`) trained with CTC on the ASR training
  transcripts, with speed perturbation, additive noise and SpecAugment, so that it recognises the demo speech on its
  own, held-out voices included (`evaluate_encoder`: greedy CTC CER and word error). Its CTC labels are characters,
  or (`EncoderSettings.ctc_labels="tokens"`, as SenseVoice) the BPE tokens of the LLM's tokenizer. Saved as a
  standard transformers checkpoint with its feature extractor (CMVN fitted); the CTC head (and, for tokens, the
  tokenizer it decodes with) is kept beside it for that measurement.
- `pretrain_llm`: a small Qwen2 causal LM trained on the text side only, in the processor's own prompt formats: plain
  text, text translation (`mt`), and text-in/text-out analogues of the speech tasks, where the text sits between
  `<|audio_bos|>` and `<|audio_eos|>` in place of the audio: copy it (transcription) or translate it (speech
  translation). The slot's tokens are sometimes doubled and its embeddings noised, since adapter outputs only
  approximate token embeddings. So it follows PART's instructions and copies and translates, as Qwen2.5 does (`evaluate_llm`: text MT
  BLEU and copy accuracy). Text costs no synthesis: it is drawn from every item the held-out splits do not use. By
  default its batches are cut by a budget of padded tokens from length-sorted buffers (`trainers.data.TokenBudget`).
- `anneal_llm`: the LLM trains on from its weights a short while at a low learning rate, with the copy examples of
  the languages it copies worst (zh, ja) drawn more often.

`make components` (`python examples/demo/pretrain.py`) trains them once, reproducibly, into
`examples/demo/components/` (shipped with the repository), so that `make demo` spends its time on PART itself; then
anneals the LLM (`--llm_anneal_steps`, 0 for none). Rerun, it keeps components built with its settings.
`--llm_only` retrains the tokenizer and the LLM alone (`rebuild_llm`), keeping the encoder and building no corpus;
`--encoder_only` retrains the encoder alone (`rebuild_encoder`), keeping the tokenizer and the LLM. A build trains in
`<output_dir>/.building` and moves the components in when all are done; killed, it resumes when rerun (a finished
component is reused, a training run continues from its last saved state).
Users with a network pass hub ids to `from_pretrained_components` instead; these functions only stand in for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import FunAsrNanoEncoderConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoEncoder  # noqa: E402

from examples.demo.texts import LANGUAGES, make_item_splits, render, sample_item  # noqa: E402
from modeling_part import PartFeatureExtractor, load_audio  # noqa: E402
from modeling_part.processing_part import DEFAULT_PROMPT_TEMPLATES, LANGUAGE_NAMES  # noqa: E402
from modeling_part.tiny import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, build_tokenizer  # noqa: E402
from trainers.data import TokenBudget  # noqa: E402
from trainers.metrics import TextNormalizer, compute_speech_metrics  # noqa: E402

SHIPPED_COMPONENTS = Path(__file__).resolve().parent / "components"
"""Where `make components` writes the stand-ins the demo uses by default."""

MANIFEST = "components.json"
"""The file in a components folder that records how they were made, on which corpus, and their scores."""

TARGET_LANGUAGE = "en"

TRAINING_STATE = "training_state.pt"
"""The resumable state a pretraining run keeps in its output folder until it has saved its outputs (`_train_loop`)."""


@dataclass
class EncoderSettings:
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 4
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 150
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed perturbation (as Kaldi's: tempo and pitch together)
    noise_snr_db: tuple[float, float] | None = (10.0, 30.0)  # white noise at an SNR drawn from this range, or None
    noise_probability: float = 0.5
    spec_augment: bool = True  # 2 frequency masks of <= 10 mel bins and 2 time masks of <= 3 frames (180 ms)
    ctc_labels: str = "characters"  # or "tokens": the LLM tokenizer's BPE tokens, as SenseVoice (see docs/demo.md)


@dataclass
class LLMSettings:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    steps: int = 3000
    batch_size: int = 48
    learning_rate: float = 2e-3
    warmup_steps: int = 150
    max_length: int = 128
    text_items: int = 20000  # items drawn for the text side (each rendered in every language), held-out ones excluded
    slot_repeat_probability: float = 0.2  # in the speech-task analogues, each slot token is doubled with this chance
    slot_noise: float = 0.0  # ... and Gaussian noise of up to this many embedding RMS is added to the slot embeddings
    split_han_characters: bool = True  # the tokenizer keeps every Han character a token of its own (docs/demo.md)
    shuffled_copy_share: float = 0.0  # this share of copy examples get a twin with the text's tokens shuffled
    repeated_copy_languages: tuple[str, ...] = ()  # the copy examples of these languages are drawn `copy_repeats`
    copy_repeats: int = 1  # times each (each draw its own slot-token doubling), the others once
    max_tokens_per_batch: int = 1700  # > 0: batches of up to this many padded tokens, cut from length-sorted buffers;
    # 0: batches of `batch_size` examples (which also sizes the sorting buffers: 50 batches)


def _linear_warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _train_loop(
    model: nn.Module, batches: Iterator, loss_fn, steps: int, lr: float, warmup: int, desc: str,
    state_path: Path | None = None, fingerprint: dict | None = None, generators: Sequence[torch.Generator] = (),
    save_every: int = 250,
) -> tuple[list[float], float]:  # fmt: skip
    """AdamW with warm-up + cosine decay and gradient clipping; returns the per-step losses and the seconds earlier,
    interrupted processes spent on them (0 unless resumed).

    With `state_path`, the training state (weights, optimizer, schedule, losses, torch's and `generators`' random
    states) is written there atomically every `save_every` steps, and a state found there is resumed from: the
    batches already drawn are drawn again and skipped, so a killed run ends with the weights an uninterrupted one
    would have. A state saved with another `fingerprint` (what the run depends on) is refused. The caller removes the
    state once it has saved its outputs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _linear_warmup_cosine(s, warmup, steps))
    losses: list[float] = []
    earlier_seconds, started = 0.0, time.time()
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"{state_path} holds a run started with other settings ({state['fingerprint']}, not "
                             f"{fingerprint}): delete it to start afresh, or resume with those settings.")  # fmt: skip
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        losses, earlier_seconds = state["losses"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        for generator, generator_state in zip(generators, state["generators"]):
            generator.set_state(generator_state)
        for _ in losses:
            next(batches)
    model.train()
    bar = tqdm(range(len(losses), steps), desc=desc, initial=len(losses), total=steps)
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
        if state_path is not None and len(losses) % save_every == 0 and len(losses) < steps:
            state = dict(fingerprint=fingerprint, model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), losses=losses, torch_rng=torch.get_rng_state(),
                         generators=[generator.get_state() for generator in generators],
                         seconds=earlier_seconds + time.time() - started)  # fmt: skip
            torch.save(state, state_path.with_name(state_path.name + ".tmp"))
            os.replace(state_path.with_name(state_path.name + ".tmp"), state_path)
    model.eval()
    return losses, earlier_seconds


def _digest(tokenizer) -> str:
    """A fingerprint of `tokenizer`'s vocabulary: a resumed run must read the tokens it started with."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def _forever(items: Sequence, batch_size: int, seed: int, budget: TokenBudget | None = None) -> Iterator[list]:
    """Shuffled batches, epoch after epoch: of `batch_size` items (capped at the number of items), or with `budget`
    cut within it from each buffer of `budget.buffer_size` shuffled items, sorted by length (`TokenBudget`)."""
    if not items:
        raise ValueError("No training items: the demo corpus split is empty for this pretraining step.")
    batch_size = min(batch_size, len(items))
    rng, batch_order = random.Random(seed), np.random.default_rng(seed)
    order = list(range(len(items)))
    while True:
        rng.shuffle(order)
        if budget is None:
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield [items[i] for i in order[start : start + batch_size]]
            continue
        for start in range(0, len(order), budget.buffer_size):
            buffer = [items[i] for i in order[start : start + budget.buffer_size]]
            for batch in budget.make_batches(buffer, batch_order):
                yield [buffer[i] for i in batch]


# ---------------------------------------------------------------------------------------------------- text side
def held_out_contents(corpus_spec: dict) -> set:
    """The semantic contents of the dev and test items of the corpus `corpus_spec` describes (no text of them may be
    used for pretraining)."""
    splits = make_item_splits(
        corpus_spec["languages"], 0, corpus_spec["dev_items"], corpus_spec["test_items"], corpus_spec["seed"]
    )
    return {item.content for item in splits.dev + splits.test}


def text_items(count: int, excluded: set, seed: int) -> list:
    """`count` items of the demo's content space (repeats allowed) whose content is not in `excluded`."""
    rng = random.Random(f"part-demo-text/{seed}")
    items = []
    while len(items) < count:
        item = sample_item(rng)
        if item.content not in excluded:
            items.append(item)
    return items


def train_tokenizer(texts: Sequence[str], output_dir: str | Path, vocab_size: int = 4000,
                    split_han_characters: bool = False):  # fmt: skip
    """A byte-level BPE tokenizer trained on `texts`, saved to `output_dir` (see `build_tokenizer`)."""
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, split_han_characters=split_han_characters)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


# -------------------------------------------------------------------------------------------------- speech encoder
class CTCModel(nn.Module):
    """A speech encoder with a linear CTC head that emits `upsampling` labels per encoder frame: 2 for characters (the
    encoder's 60 ms frames are fewer than the characters espeak says in them), 1 for BPE tokens."""

    def __init__(self, encoder: FunAsrNanoEncoder, vocab_size: int, upsampling: int = 1):
        super().__init__()
        self.encoder = encoder
        self.vocab_size = vocab_size
        self.upsampling = upsampling
        self.head = nn.Linear(encoder.config.hidden_size, self.upsampling * vocab_size)

    def log_probs(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities `[B, T * upsampling, V]`, their lengths)."""
        hidden = self.encoder(input_features=features, input_features_mask=mask).last_hidden_state
        logits = self.head(hidden).float().reshape(hidden.shape[0], -1, self.vocab_size)
        return F.log_softmax(logits, dim=-1), mask.sum(-1) * self.upsampling

    def forward(self, features, mask, targets, target_lengths):
        log_probs, lengths = self.log_probs(features, mask)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=0, zero_infinity=True)


def _perturb(waveform: np.ndarray, speed: float, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation by resampling (tempo and pitch change together), then white noise at `snr_db`."""
    import soxr

    if speed != 1.0:
        waveform = soxr.resample(waveform, 16_000, round(16_000 / speed), quality="HQ").astype(np.float32)
    if snr_db is not None:
        power = float(np.mean(waveform**2)) + 1e-10
        waveform = waveform + rng.standard_normal(len(waveform)).astype(np.float32) * math.sqrt(power / 10 ** (snr_db / 10))
    return waveform


def spec_augment(features: torch.Tensor, lengths: Sequence[int], num_mel_bins: int, generator: torch.Generator):
    """SpecAugment on low-frame-rate stacked features `[B, T, stack * mel]` (in place): 2 frequency masks of up to 10
    mel bins (the same bins in every stacked frame) and 2 time masks of up to 3 frames, set to 0 (the CMVN mean)."""
    stacked = features.view(features.shape[0], features.shape[1], -1, num_mel_bins)
    for i, length in enumerate(lengths):
        for _ in range(2):
            width = int(torch.randint(0, 11, (1,), generator=generator))
            start = int(torch.randint(0, num_mel_bins - width + 1, (1,), generator=generator))
            stacked[i, :, :, start : start + width] = 0
            span = min(int(torch.randint(0, 4, (1,), generator=generator)), max(0, length // 5))
            begin = int(torch.randint(0, max(1, length - span + 1), (1,), generator=generator))
            stacked[i, begin : begin + span] = 0
    return features


def _features(feature_extractor: PartFeatureExtractor, waveforms: Sequence[np.ndarray], desc: str) -> list[np.ndarray]:
    return [
        np.asarray(feature_extractor(w, return_tensors=None, padding=False)["input_features"][0], dtype=np.float32)
        for w in tqdm(waveforms, desc=desc)
    ]


def _batch_features(features: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(f) for f in features]
    batch = torch.zeros(len(features), max(lengths), features[0].shape[1])
    mask = torch.zeros(len(features), max(lengths), dtype=torch.long)
    for i, f in enumerate(features):
        batch[i, : len(f)] = torch.from_numpy(f)
        mask[i, : len(f)] = 1
    return batch, mask


CTC_HEAD = "ctc_head.safetensors"
CTC_TOKENIZER = "ctc_tokenizer"


def pretrain_encoder(
    asr_split, output_dir: str | Path, settings: EncoderSettings = EncoderSettings(), seed: int = 0, tokenizer=None
) -> dict:
    """Trains a SenseVoice-style encoder with CTC on `asr_split` (rows with `audio` and `text`); saves it and its
    feature extractor to `output_dir`, and the CTC head to `output_dir/ctc_head.safetensors`. The CTC labels are the
    transcripts' characters, or with `settings.ctc_labels="tokens"` the BPE tokens of `tokenizer` (saved to
    `output_dir/ctc_tokenizer`)."""
    if settings.ctc_labels not in ("characters", "tokens"):
        raise ValueError(f"EncoderSettings.ctc_labels must be 'characters' or 'tokens', got {settings.ctc_labels!r}.")
    if settings.ctc_labels == "tokens" and tokenizer is None:
        raise ValueError("EncoderSettings.ctc_labels='tokens' needs the LLM's tokenizer: pass tokenizer=.")
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.time()
    waveforms = [load_audio(a, name=f"train asr row {i}") for i, a in enumerate(asr_split["audio"])]
    texts = list(asr_split["text"])
    feature_extractor = PartFeatureExtractor(front_end="sensevoice")
    feature_extractor.fit_cmvn(waveforms)
    copies = []  # one perturbed copy of the corpus per speed factor; noise on a share of the utterances
    for speed in settings.speed_factors:
        perturbed = [
            _perturb(w, speed, rng.uniform(*settings.noise_snr_db) if settings.noise_snr_db and rng.random() < settings.noise_probability else None, rng)
            for w in waveforms
        ]
        copies.append(_features(feature_extractor, perturbed, f"encoder features (speed {speed})"))
    if settings.ctc_labels == "tokens":  # 0 is the CTC blank, so label = token id + 1
        labels = [[i + 1 for i in ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        vocab_size, upsampling, metadata = len(tokenizer) + 1, 1, {"labels": "tokens"}
    else:
        characters = sorted({c for t in texts for c in t})
        char_ids = {c: i + 1 for i, c in enumerate(characters)}
        labels = [[char_ids[c] for c in t] for t in texts]
        vocab_size, upsampling = len(characters) + 1, 2
        metadata = {"labels": "characters", "characters": json.dumps(characters, ensure_ascii=False)}
    samples = [(f, label) for copy in copies for f, label in zip(copy, labels)]
    too_long = sum(len(label) > upsampling * len(f) for f, label in samples)

    config = FunAsrNanoEncoderConfig(
        hidden_size=settings.hidden_size,
        num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_timestamp_prediction_layers=0,
        hidden_dropout=0.1,
        attention_dropout=0.0,
    )
    model = CTCModel(FunAsrNanoEncoder(config), vocab_size, upsampling)
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(batch):
        features, mask = _batch_features([f for f, _ in batch])
        if settings.spec_augment:
            spec_augment(features, mask.sum(-1).tolist(), feature_extractor.feature_size, generator)
        targets = torch.tensor([c for _, t in batch for c in t])
        target_lengths = torch.tensor([len(t) for _, t in batch])
        return model(features, mask, targets, target_lengths)

    state_path = Path(output_dir) / TRAINING_STATE
    state_path.parent.mkdir(parents=True, exist_ok=True)
    losses, earlier_seconds = _train_loop(
        model, _forever(samples, settings.batch_size, seed), loss_fn, settings.steps, settings.learning_rate,
        settings.warmup_steps, "pretraining the speech encoder (CTC)", state_path,
        {"settings": asdict(settings), "seed": seed, "samples": len(samples), "labels": vocab_size}, [generator],
    )
    model.encoder.save_pretrained(output_dir)
    feature_extractor._auto_class = None  # no exported copy of its source: the installed package provides the class
    feature_extractor.save_pretrained(output_dir)
    if settings.ctc_labels == "tokens":
        tokenizer.save_pretrained(Path(output_dir) / CTC_TOKENIZER)
    save_file(
        {"weight": model.head.weight.contiguous(), "bias": model.head.bias.contiguous()},
        str(Path(output_dir) / CTC_HEAD), metadata={**metadata, "upsampling": str(upsampling)},
    )
    state_path.unlink(missing_ok=True)
    return {"ctc_labels": metadata["labels"], "ctc_loss_first": float(np.mean(losses[:20])), "ctc_loss_last": float(np.mean(losses[-20:])),
            "utterances": len(texts), "training_samples": len(samples), "labels_longer_than_frames": too_long,
            "settings": asdict(settings), "seconds": earlier_seconds + time.time() - started}  # fmt: skip


def load_ctc_model(encoder_dir: str | Path) -> tuple[CTCModel, Callable[[list[int]], str]]:
    """The encoder of `encoder_dir` with its CTC head (from `pretrain_encoder`), and the function that turns the head's
    label ids (blanks and repeats removed) into text."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = Path(encoder_dir) / CTC_HEAD
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the encoder's CTC head is saved there by pretrain_encoder.")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    if metadata.get("labels") == "tokens":
        tokenizer = AutoTokenizer.from_pretrained(Path(encoder_dir) / CTC_TOKENIZER)
        decode = lambda ids: tokenizer.decode([i - 1 for i in ids])  # noqa: E731
    else:
        characters = json.loads(metadata["characters"])
        decode = lambda ids: "".join(characters[i - 1] for i in ids)  # noqa: E731
    encoder = FunAsrNanoEncoder.from_pretrained(encoder_dir, dtype=torch.float32)
    model = CTCModel(encoder, weight.shape[0] // int(metadata["upsampling"]), int(metadata["upsampling"]))
    model.head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return model.eval(), decode


@torch.no_grad()
def evaluate_encoder(encoder_dir: str | Path, asr_split, batch_size: int = 32) -> dict:
    """The encoder on its own, greedy CTC decoding, on `asr_split` (rows with `audio`, `text`, `source_language`): CER
    (%) per language and averaged (character edits over reference characters after `TextNormalizer`, as jiwer counts),
    and the demo's ASR metric (`asr_avg_error`: WER, or CER for zh/ja, as `compute_speech_metrics` reports for PART)."""
    import jiwer

    model, decode = load_ctc_model(encoder_dir)
    feature_extractor = PartFeatureExtractor.from_pretrained(encoder_dir)
    rows = asr_split.select_columns(["audio", "text", "source_language"]).to_list()
    features = _features(feature_extractor, [load_audio(r["audio"]) for r in rows], "encoder CER features")
    hypotheses = []
    for start in range(0, len(rows), batch_size):
        log_probs, lengths = model.log_probs(*_batch_features(features[start : start + batch_size]))
        for best, length in zip(log_probs.argmax(-1), lengths):
            ids = torch.unique_consecutive(best[: int(length)]).tolist()
            hypotheses.append(decode([i for i in ids if i > 0]))
    normalize = TextNormalizer()
    per_language: dict[str, tuple[list[str], list[str]]] = {}
    for row, hypothesis in zip(rows, hypotheses):
        references, predictions = per_language.setdefault(row["source_language"], ([], []))
        references.append(normalize(row["text"], row["source_language"]) or " ")
        predictions.append(normalize(hypothesis, row["source_language"]))
    cer = {language: 100 * jiwer.cer(refs, preds) for language, (refs, preds) in sorted(per_language.items())}
    languages = [row["source_language"] for row in rows]
    asr = compute_speech_metrics(hypotheses, [row["text"] for row in rows], ["asr"] * len(rows), languages, languages)
    asr_error = {language: asr.get(f"wer_{language}", asr.get(f"cer_{language}")) for language in cer}
    return {"cer": cer, "avg_cer": float(np.mean(list(cer.values()))), "asr_error": asr_error,
            "asr_avg_error": asr["asr_avg_error"], "utterances": len(rows)}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------- LLM
def _instruction(task: str, source: str, target: str, source_text: str = "") -> str:
    names = {"source_language": LANGUAGE_NAMES[source], "target_language": LANGUAGE_NAMES[target]}
    return DEFAULT_PROMPT_TEMPLATES[task].format(**names, source_text=source_text)


def text_example(tokenizer, kind: str, source: str, source_text: str, target_text: str, repeat: float = 0.0,
                 rng: random.Random | None = None, shuffle: bool = False) -> tuple[list[int], list[int]]:  # fmt: skip
    """(prompt ids, answer ids) of one text-side example, laid out as `PartProcessor.build_prompt_ids` lays out PART's
    prompts (no chat template): `kind` "text" (no prompt), "mt", or "copy"/"translate", where `source_text` stands
    between the audio delimiters in place of the audio (each of its tokens doubled with probability `repeat`). With
    `shuffle` (copy only), the source's tokens are shuffled by `rng`, in the slot and the answer alike: a copy that
    the language cannot predict, only the slot."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    if kind == "text":
        return [], encode(source_text)
    if kind == "mt":
        return encode(_instruction("mt", source, TARGET_LANGUAGE, source_text) + "\n"), encode(target_text)
    task, target = ("asr", source) if kind == "copy" else ("s2tt", TARGET_LANGUAGE)
    source_ids, answer = encode(source_text), encode(target_text)
    if shuffle:
        if kind != "copy" or rng is None:
            raise ValueError("text_example: shuffle needs kind='copy' and an rng.")
        source_ids = answer = rng.sample(source_ids, len(source_ids))
    slot = []
    for token in source_ids:
        slot += [token, token] if rng is not None and rng.random() < repeat else [token]
    bos, eos = tokenizer.convert_tokens_to_ids([AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN])
    return [bos, *slot, eos, *encode(_instruction(task, source, target) + "\n")], answer


def llm_examples(items: Sequence, languages: Sequence[str], tokenizer, settings: LLMSettings, seed: int) -> list:
    """Tokenised (prompt, answer) examples from `items`: for each item and language, its plain text, its copy
    (transcription analogue) and, for a language other than English, its translation as `mt` and as the speech
    translation analogue; `settings.shuffled_copy_share` of the copies get a twin with shuffled tokens, and the
    copies of `settings.repeated_copy_languages` are drawn `settings.copy_repeats` times."""
    unknown = set(settings.repeated_copy_languages) - set(languages)
    if settings.copy_repeats < 1 or unknown:
        raise ValueError(f"LLMSettings: copy_repeats must be >= 1 (got {settings.copy_repeats}) and "
                         f"repeated_copy_languages among {list(languages)} (not {sorted(unknown)}).")  # fmt: skip
    rng = random.Random(seed)
    examples = []
    for item in tqdm(items, desc="LLM text examples"):
        english = render(item, TARGET_LANGUAGE)
        for language in languages:
            text = render(item, language)
            kinds = ["text", "copy"] + (["mt", "translate"] if language != TARGET_LANGUAGE else [])
            for kind in kinds:
                target = text if kind in ("text", "copy") else english
                repeated = kind == "copy" and language in settings.repeated_copy_languages
                for _ in range(settings.copy_repeats if repeated else 1):
                    examples.append(text_example(tokenizer, kind, language, text, target,
                                                 settings.slot_repeat_probability, rng))  # fmt: skip
                if kind == "copy" and settings.shuffled_copy_share and rng.random() < settings.shuffled_copy_share:
                    examples.append(text_example(tokenizer, kind, language, text, target,
                                                 settings.slot_repeat_probability, rng, shuffle=True))  # fmt: skip
    return examples


def _llm_config(tokenizer, settings: LLMSettings) -> Qwen2Config:
    """The architecture of a freshly trained LLM stand-in for `tokenizer`."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=max(1, settings.num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pretrain_llm(
    examples: Sequence[tuple[list[int], list[int]]], tokenizer, output_dir: str | Path,
    settings: LLMSettings = LLMSettings(), seed: int = 0, init_dir: str | Path | None = None,
) -> dict:  # fmt: skip
    """Trains a small Qwen2 causal LM on (prompt, answer) examples (loss on the answers and eos); saves it with the
    tokenizer. With `init_dir`, training continues from the LLM saved there (its architecture: `settings`' size
    fields are not read), which must have `tokenizer`'s vocabulary."""
    torch.manual_seed(seed)
    started = time.time()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    sequences = [((prompt + answer)[: settings.max_length - 1] + [eos], len(prompt)) for prompt, answer in examples]
    if init_dir is None:
        model = Qwen2ForCausalLM(_llm_config(tokenizer, settings))
    else:
        model = Qwen2ForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(f"The LLM in {init_dir} has {model.config.vocab_size} tokens, the tokenizer "
                             f"{len(tokenizer)}: continue it with its own tokenizer.")  # fmt: skip
    bos_id, eos_id = tokenizer.convert_tokens_to_ids([AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN])

    def loss_fn(batch):
        length = max(len(s) for s, _ in batch)
        ids = torch.full((len(batch), length), pad)
        labels = torch.full((len(batch), length), -100)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (s, prompt_length) in enumerate(batch):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, prompt_length : len(s)] = torch.tensor(s[prompt_length:])
            mask[i, : len(s)] = 1
        embeddings = model.get_input_embeddings()(ids)
        if settings.slot_noise > 0:  # adapter outputs only approximate token embeddings: read through noise
            opened = torch.cumsum(ids == bos_id, dim=1) - torch.cumsum(ids == eos_id, dim=1) - (ids == bos_id).long()
            scale = torch.rand(len(batch), 1, 1) * settings.slot_noise * embeddings.detach().pow(2).mean().sqrt()
            embeddings = embeddings + opened.unsqueeze(-1) * scale * torch.randn_like(embeddings)
        return model(inputs_embeds=embeddings, attention_mask=mask, labels=labels).loss

    budget = None
    if settings.max_tokens_per_batch > 0:
        budget = TokenBudget(max_tokens=settings.max_tokens_per_batch, buffer_size=50 * settings.batch_size,
                             positions_fn=lambda sequence: len(sequence[0]), seconds_fn=lambda sequence: 0.0)  # fmt: skip
    state_path = Path(output_dir) / TRAINING_STATE
    state_path.parent.mkdir(parents=True, exist_ok=True)
    losses, earlier_seconds = _train_loop(
        model, _forever(sequences, settings.batch_size, seed, budget), loss_fn, settings.steps, settings.learning_rate,
        settings.warmup_steps, "pretraining the LLM", state_path,
        {"settings": asdict(settings), "seed": seed, "examples": len(sequences), "vocabulary": _digest(tokenizer),
         "init": None if init_dir is None else str(init_dir)},
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    state_path.unlink(missing_ok=True)
    return {"lm_loss_first": float(np.mean(losses[:20])), "lm_loss_last": float(np.mean(losses[-20:])),
            "examples": len(sequences), "settings": asdict(settings),
            "seconds": earlier_seconds + time.time() - started}  # fmt: skip


@torch.no_grad()
def evaluate_llm(llm_dir: str | Path, test_split, batch_size: int = 64, max_new_tokens: int = 48) -> dict:
    """The LLM on its own, on the text of `test_split`'s speech rows: text MT BLEU per direction (`mt` prompts), and
    copy accuracy (% of transcription-analogue prompts answered with exactly the given text) per language."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = Qwen2ForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    rows = [r for r in test_split.select_columns(["task", "source_language", "source_text", "text"]).to_list()
            if r["task"] != "s2tt"]  # fmt: skip
    prompts = [text_example(tokenizer, "copy" if r["task"] == "asr" else "mt", r["source_language"], r["source_text"],
                            r["text"])[0] for r in rows]  # fmt: skip
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        length = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in chunk])
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        outputs += tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True)
    copy: dict[str, list[bool]] = {}
    mt = [(o.strip(), r) for o, r in zip(outputs, rows) if r["task"] == "mt"]
    for output, row in zip(outputs, rows):
        if row["task"] == "asr":
            copy.setdefault(row["source_language"], []).append(output.strip() == row["text"].strip())
    metrics = compute_speech_metrics([o for o, _ in mt], [r["text"] for _, r in mt], ["mt"] * len(mt),
                                     [r["source_language"] for _, r in mt], [TARGET_LANGUAGE] * len(mt))  # fmt: skip
    accuracy = {language: 100 * float(np.mean(hits)) for language, hits in sorted(copy.items())}
    return {
        "mt_bleu": {k[len("mt_bleu_"):]: v for k, v in metrics.items() if k.startswith("mt_bleu_")},
        "mt_avg_bleu": metrics.get("mt_avg_bleu"),
        "copy_accuracy": accuracy,
        "copy_avg_accuracy": float(np.mean(list(accuracy.values()))) if accuracy else None,
    }


# ---------------------------------------------------------------------------------------------------- components
def corpus_spec(corpus_arguments: dict) -> dict:
    """What of a corpus the components depend on: languages and the held-out items and speakers (seed, sizes)."""
    from examples.demo.corpus import CORPUS_VERSION, TEST_SPEAKERS

    return {
        "version": CORPUS_VERSION, "languages": list(corpus_arguments["languages"]), "seed": corpus_arguments["seed"],
        "dev_items": corpus_arguments["dev_items"], "test_items": corpus_arguments["test_items"],
        "test_speakers": list(TEST_SPEAKERS),
    }  # fmt: skip


def text_of_test_split(spec: dict):
    """The text of the test split of the corpus `spec` describes, as its asr and mt rows hold it (task,
    source_language, source_text, text): what `evaluate_llm` reads, without synthesising the speech."""
    from datasets import Dataset

    splits = make_item_splits(spec["languages"], 0, spec["dev_items"], spec["test_items"], spec["seed"])
    rows = []
    for language in spec["languages"]:
        for item in splits.test:
            text = render(item, language)
            rows.append(dict(task="asr", source_language=language, source_text=text, text=text))
            if language != TARGET_LANGUAGE:
                rows.append(dict(task="mt", source_language=language, source_text=text,
                                 text=render(item, TARGET_LANGUAGE)))  # fmt: skip
    return Dataset.from_list(rows)


def _text_side(spec: dict, output_dir: Path, llm: LLMSettings, seed: int) -> tuple[list, Any]:
    """The LLM's text items (the content space minus the held-out items of `spec`) and the tokenizer trained on their
    renderings, saved to `output_dir/llm`."""
    items = text_items(llm.text_items, held_out_contents(spec), seed)
    texts = [render(item, language) for item in items for language in spec["languages"]]
    for language in spec["languages"]:  # the instructions too, so that prompts are a few tokens
        texts += [_instruction("asr", language, language), _instruction("s2tt", language, TARGET_LANGUAGE),
                  _instruction("mt", language, TARGET_LANGUAGE)]  # fmt: skip
    return items, train_tokenizer(texts, output_dir / "llm", split_han_characters=llm.split_han_characters)


FINISHED = "finished.json"
"""In a component's folder under `BUILDING`: its report, once it is trained and scored (an interrupted build reuses it)."""
BUILDING = ".building"
"""Where a build trains its components (resumable) before it moves them into the components folder, all at once."""


def _as_json(value: Any) -> Any:
    """`value` as JSON holds it (lists for tuples): as a manifest or a resumed build returns it."""
    return json.loads(json.dumps(value))


def _finished(folder: Path, fingerprint: dict, train: Callable[[], dict]) -> dict:
    """The report of the component in `folder`: the one an interrupted build finished there with the same
    `fingerprint`, or `train()`'s (recorded in `folder/FINISHED`)."""
    fingerprint = _as_json(fingerprint)
    path = folder / FINISHED
    finished = json.loads(path.read_text()) if path.exists() else {}
    if finished.get("fingerprint") == fingerprint:
        return finished["report"]
    report = _as_json(train())
    path.write_text(json.dumps({"fingerprint": fingerprint, "report": report}, ensure_ascii=False))
    return report


def _llm(items: list, tokenizer, spec: dict, output_dir: Path, llm: LLMSettings, seed: int) -> dict:
    """The LLM trained on `items` (saved to `output_dir/llm`), evaluated on the test split's text."""

    def train() -> dict:
        report = pretrain_llm(llm_examples(items, spec["languages"], tokenizer, llm, seed), tokenizer,
                              output_dir / "llm", llm, seed)  # fmt: skip
        return {**report, "test": evaluate_llm(output_dir / "llm", text_of_test_split(spec))}

    fingerprint = {"spec": spec, "settings": asdict(llm), "seed": seed, "vocabulary": _digest(tokenizer)}
    return _finished(output_dir / "llm", fingerprint, train)


def _encoder(corpus, spec: dict, output_dir: Path, settings: EncoderSettings, seed: int, tokenizer) -> dict:
    """The encoder trained on `corpus`' train ASR rows (saved to `output_dir/encoder`), evaluated on its test ones."""

    def train() -> dict:
        asr_train = corpus["train"].filter(lambda task: task == "asr", input_columns="task")
        asr_test = corpus["test"].filter(lambda task: task == "asr", input_columns="task")
        report = pretrain_encoder(asr_train, output_dir / "encoder", settings, seed, tokenizer)
        return {**report, "test": evaluate_encoder(output_dir / "encoder", asr_test)}

    labels = _digest(tokenizer) if tokenizer is not None else "characters"
    fingerprint = {"spec": spec, "settings": asdict(settings), "seed": seed, "labels": labels}
    return _finished(output_dir / "encoder", fingerprint, train)


def _install(output_dir: Path, names: Sequence[str], report: dict) -> None:
    """Moves the components `names` built in `output_dir/BUILDING` into `output_dir`, replacing the old ones, and
    writes the manifest: until then an interrupted build leaves the components folder as it was."""
    import shutil

    for name in names:
        built, target, old = output_dir / BUILDING / name, output_dir / name, output_dir / BUILDING / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)  # left by a build killed while it moved this component
        if target.exists():
            os.replace(target, old)
        os.replace(built, target)
        (target / FINISHED).unlink()
    _write_manifest(output_dir, report)
    shutil.rmtree(output_dir / BUILDING)


def _kept_manifest(output_dir: Path, spec: dict, kept: str) -> dict:
    """The manifest of the components in `output_dir` whose `kept` component a rebuild keeps: refused when it records
    none, or records another corpus."""
    path = output_dir / MANIFEST
    report = json.loads(path.read_text()) if path.exists() else None
    if report is None or kept not in report:
        raise FileNotFoundError(f"{path} records no {kept} to keep; build all components (without the --*_only flags).")
    if report["corpus"] != spec:
        raise ValueError(f"The {kept} in {output_dir} was made for the corpus {report['corpus']}, not {spec}; "
                         "build all components (without the --*_only flags).")  # fmt: skip
    return report


def _write_manifest(output_dir: Path, report: dict) -> None:
    (output_dir / MANIFEST).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def build_components(
    corpus, spec: dict, output_dir: str | Path, encoder: EncoderSettings, llm: LLMSettings, seed: int = 0
) -> dict:
    """Tokenizer, encoder and LLM trained on `corpus` (its train split's speech; text drawn from the content space
    minus the held-out items of `spec`), evaluated on its test split, written to `output_dir` with a manifest."""
    output_dir = Path(output_dir)
    report: dict = {"corpus": spec, "seed": seed}
    items, tokenizer = _text_side(spec, output_dir / BUILDING, llm, seed)
    report["encoder"] = _encoder(corpus, spec, output_dir / BUILDING, encoder, seed, tokenizer)
    report["llm"] = _llm(items, tokenizer, spec, output_dir / BUILDING, llm, seed)
    report["seconds"] = report["encoder"]["seconds"] + report["llm"]["seconds"]
    _install(output_dir, ["encoder", "llm"], report)
    return report


def rebuild_llm(output_dir: str | Path, spec: dict, llm: LLMSettings, seed: int = 0) -> dict:
    """Retrains the tokenizer and the LLM of the components in `output_dir`, keeping their encoder: it needs no
    speech corpus. Refused when the encoder was made for another corpus or reads the tokenizer (CTC token labels)."""
    output_dir = Path(output_dir)
    report = _kept_manifest(output_dir, spec, "encoder")
    if report["encoder"]["settings"]["ctc_labels"] != "characters":
        raise ValueError("The encoder's CTC labels are the tokenizer's tokens: a new tokenizer needs a new encoder; "
                         "build all components (without --llm_only).")  # fmt: skip
    report["llm"] = _llm(*_text_side(spec, output_dir / BUILDING, llm, seed), spec, output_dir / BUILDING, llm, seed)
    report["seconds"] = report["encoder"]["seconds"] + report["llm"]["seconds"]
    _install(output_dir, ["llm"], report)
    return report


def anneal_llm(output_dir: str | Path, spec: dict, llm: LLMSettings, seed: int = 0) -> dict:
    """Continues training the LLM of the components in `output_dir` with `llm`'s steps, learning rate and examples
    (`make components`: 1,500 steps at 3e-4 in which the copies of zh and ja, the languages it copies worst, are
    drawn four times), keeping its tokenizer and the encoder; resumable as a build is. The manifest's `llm` then
    records this phase, its scores and the LLM it started from (`annealed_from`); its `seconds` count both."""
    import shutil

    from transformers import PreTrainedTokenizerFast

    output_dir = Path(output_dir)
    report = _kept_manifest(output_dir, spec, "llm")
    start, folder = report["llm"], output_dir / BUILDING / "llm"
    # as `train_tokenizer` made it (AutoTokenizer would build Qwen2's pre-tokenizer from config.json's model type)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(output_dir / "llm")

    def train() -> dict:
        examples = llm_examples(text_items(llm.text_items, held_out_contents(spec), seed), spec["languages"],
                                tokenizer, llm, seed)  # fmt: skip
        phase = pretrain_llm(examples, tokenizer, folder, llm, seed, init_dir=output_dir / "llm")
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the very files, not a re-serialisation
            shutil.copyfile(output_dir / "llm" / name, folder / name)
        return {**phase, "seconds": start["seconds"] + phase["seconds"], "annealed_from": start,
                "test": evaluate_llm(folder, text_of_test_split(spec))}  # fmt: skip

    fingerprint = {"spec": spec, "settings": asdict(llm), "seed": seed, "vocabulary": _digest(tokenizer), "from": start}
    report["llm"] = _finished(folder, fingerprint, train)
    report["seconds"] = report["encoder"]["seconds"] + report["llm"]["seconds"]
    _install(output_dir, ["llm"], report)
    return report


def rebuild_encoder(corpus, spec: dict, output_dir: str | Path, encoder: EncoderSettings, seed: int = 0) -> dict:
    """Retrains the encoder of the components in `output_dir` on `corpus`, keeping their tokenizer and LLM (an
    encoder with CTC token labels reads that tokenizer). Refused when the LLM was made for another corpus."""
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    report = _kept_manifest(output_dir, spec, "llm")
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "llm") if encoder.ctc_labels == "tokens" else None
    report["encoder"] = _encoder(corpus, spec, output_dir / BUILDING, encoder, seed, tokenizer)
    report["seconds"] = report["encoder"]["seconds"] + report["llm"]["seconds"]
    _install(output_dir, ["encoder"], report)
    return report


def built_components(output_dir: str | Path, spec: dict, encoder: EncoderSettings, llm: LLMSettings,
                     anneal: LLMSettings | None, seed: int = 0) -> dict | None:  # fmt: skip
    """The manifest of the components in `output_dir` if they were built for `spec` with these settings and seed,
    their LLM not annealed yet or annealed with `anneal` (so `make components` rerun after an interrupted anneal
    only anneals); else None."""
    path = Path(output_dir) / MANIFEST
    report = json.loads(path.read_text()) if path.exists() else None
    if report is None or report["corpus"] != spec or report["seed"] != seed:
        return None
    base = report["llm"].get("annealed_from", report["llm"])
    annealed = "annealed_from" in report["llm"]
    if annealed and (anneal is None or report["llm"]["settings"] != _as_json(asdict(anneal))):
        return None
    if report["encoder"]["settings"] != _as_json(asdict(encoder)) or base["settings"] != _as_json(asdict(llm)):
        return None
    return report


@dataclass
class ComponentArguments:
    """`make components`: the demo's stand-ins, trained once on a larger corpus than the demo's (same held-out items
    and speakers), written to `examples/demo/components/`."""

    output_dir: str = field(default=str(SHIPPED_COMPONENTS), metadata={"help": "Where the components go."})
    corpus_dir: str = field(default="outputs/components/corpus", metadata={"help": "The pretraining corpus."})
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES), metadata={"help": "Languages."})
    train_items_per_language: int = field(default=1500, metadata={"help": "Speech utterances per language."})
    dev_items: int = field(default=40, metadata={"help": "Must match the demo's (held-out items)."})
    test_items: int = field(default=40, metadata={"help": "Must match the demo's (held-out items)."})
    corpus_seed: int = field(default=0, metadata={"help": "Must match the demo's --seed (held-out items)."})
    seed: int = field(default=0, metadata={"help": "Seed of the pretraining runs."})
    encoder_steps: int = field(default=6000, metadata={"help": "CTC steps (the shipped encoder's; twice the 3,000 "
                               "of EncoderSettings, which the demo uses when it trains stand-ins itself)."})  # fmt: skip
    llm_steps: int = field(default=LLMSettings.steps, metadata={"help": "LLM steps."})
    llm_learning_rate: float = field(default=LLMSettings.learning_rate, metadata={"help": "The LLM's peak learning "
                                     "rate (warm-up, then cosine decay)."})  # fmt: skip
    llm_split_han_characters: bool = field(default=LLMSettings.split_han_characters, metadata={"help": "Every Han "
                                           "character a token of its own in the LLM's tokenizer (see docs/demo.md); "
                                           "--no_llm_split_han_characters lets BPE merge them."})  # fmt: skip
    llm_shuffled_copy_share: float = field(default=LLMSettings.shuffled_copy_share, metadata={"help": "This share of "
                                           "the LLM's copy examples get a twin with shuffled tokens."})  # fmt: skip
    llm_repeated_copy_languages: list[str] = field(default_factory=list, metadata={"help": "Languages whose copy "
                                                   "examples the LLM draws --llm_copy_repeats times (e.g. zh ja: "
                                                   "the languages it copies worst; see docs/demo.md)."})  # fmt: skip
    llm_copy_repeats: int = field(default=LLMSettings.copy_repeats, metadata={"help": "How many times each copy "
                                  "example of --llm_repeated_copy_languages is drawn."})  # fmt: skip
    llm_anneal_steps: int = field(default=1500, metadata={"help": "After its --llm_steps the LLM anneals this many "
                                  "steps more (0: none), at --llm_anneal_learning_rate, drawing the copy examples of "
                                  "--llm_anneal_repeated_copy_languages --llm_anneal_copy_repeats times (see "
                                  "docs/demo.md)."})  # fmt: skip
    llm_anneal_learning_rate: float = field(default=3e-4, metadata={"help": "The anneal's peak learning rate."})
    llm_anneal_repeated_copy_languages: list[str] = field(default_factory=lambda: ["zh", "ja"], metadata={"help":
                                                          "The anneal's --llm_repeated_copy_languages."})  # fmt: skip
    llm_anneal_copy_repeats: int = field(default=4, metadata={"help": "The anneal's --llm_copy_repeats."})
    llm_max_tokens_per_batch: int = field(default=LLMSettings.max_tokens_per_batch, metadata={"help": "> 0: the "
                                          "LLM's batches hold up to this many padded tokens (length-sorted); 0: "
                                          "batches of 48 examples."})  # fmt: skip
    llm_only: bool = field(default=False, metadata={"help": "Retrain only the tokenizer and the LLM, keeping the "
                           "encoder in output_dir (no speech corpus is built)."})  # fmt: skip
    encoder_only: bool = field(default=False, metadata={"help": "Retrain only the encoder, keeping the tokenizer "
                               "and the LLM in output_dir."})  # fmt: skip
    half_precision: bool = field(default=True, metadata={"help": "Store weights in float16 (half the size)."})


def component_settings(args: ComponentArguments) -> tuple[EncoderSettings, LLMSettings, LLMSettings | None]:
    """The encoder's, the LLM's and the LLM anneal's training settings that `args` ask for (`make components`: the
    shipped ones; no anneal with `--llm_anneal_steps 0`)."""
    llm = LLMSettings(steps=args.llm_steps, learning_rate=args.llm_learning_rate,
                      split_han_characters=args.llm_split_han_characters,
                      shuffled_copy_share=args.llm_shuffled_copy_share,
                      repeated_copy_languages=tuple(args.llm_repeated_copy_languages),
                      copy_repeats=args.llm_copy_repeats, max_tokens_per_batch=args.llm_max_tokens_per_batch)  # fmt: skip
    anneal = replace(llm, steps=args.llm_anneal_steps, learning_rate=args.llm_anneal_learning_rate,
                     repeated_copy_languages=tuple(args.llm_anneal_repeated_copy_languages),
                     copy_repeats=args.llm_anneal_copy_repeats)  # fmt: skip
    return EncoderSettings(steps=args.encoder_steps), llm, anneal if anneal.steps > 0 else None


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    from examples.demo.corpus import build_corpus

    (args,) = HfArgumentParser(ComponentArguments).parse_args_into_dataclasses(args=argv)
    corpus_arguments = dict(languages=args.languages, train_items_per_language=args.train_items_per_language,
                            dev_items=args.dev_items, test_items=args.test_items, seed=args.corpus_seed)  # fmt: skip
    spec = corpus_spec(corpus_arguments)
    encoder, llm, anneal = component_settings(args)
    if args.llm_only and args.encoder_only:
        raise ValueError("--llm_only and --encoder_only exclude each other: pass neither to rebuild both.")
    if args.llm_only:
        report = rebuild_llm(args.output_dir, spec, llm, args.seed)
    elif args.encoder_only:
        corpus = build_corpus(args.corpus_dir, reuse_existing=True, **corpus_arguments)
        report = rebuild_encoder(corpus, spec, args.output_dir, encoder, args.seed)
    else:
        report = built_components(args.output_dir, spec, encoder, llm, anneal, args.seed)
        if report is None:
            corpus = build_corpus(args.corpus_dir, reuse_existing=True, **corpus_arguments)
            report = build_components(corpus, spec, args.output_dir, encoder, llm, args.seed)
        else:
            print(f"The components in {args.output_dir} were built with these settings: kept.")
    if args.half_precision:  # before the anneal too: it starts from the LLM as it is shipped
        shrink_to_half_precision(args.output_dir)
    if anneal is not None and not args.encoder_only and report["llm"]["settings"] != _as_json(asdict(anneal)):
        report = anneal_llm(args.output_dir, spec, anneal, args.seed)
        if args.half_precision:
            shrink_to_half_precision(args.output_dir)
    print(json.dumps({k: report[k]["test"] for k in ("encoder", "llm")}, indent=2, ensure_ascii=False))
    return report


def shrink_to_half_precision(components_dir: str | Path) -> None:
    """Rewrites the floating-point weights of the encoder, its CTC head and the LLM in float16 (they load in float32)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    for path in Path(components_dir).glob("*/*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata=metadata)


__all__ = [
    "EncoderSettings", "LLMSettings", "anneal_llm", "build_components", "built_components", "corpus_spec",
    "evaluate_encoder", "evaluate_llm", "pretrain_encoder", "pretrain_llm", "rebuild_encoder", "rebuild_llm",
    "text_of_test_split", "train_tokenizer",
]  # fmt: skip

if __name__ == "__main__":
    main()
