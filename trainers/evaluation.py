"""Evaluation with generation: transcripts and translations of a mixed test set, on one process or across ranks
(ZeRO-3 included), scored by `trainers.metrics`; long recordings are cut at pauses as the pipeline does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from modeling_part.audio_utils import load_audio
from modeling_part.long_form import Chunk, join_texts, merge_chunk_texts, plan_chunks

from .collator import PartDataCollator
from .metrics import HypothesisCap, compute_speech_metrics

META_COLUMNS = ("task", "source_language", "target_language", "text")


@torch.no_grad()
def generate_predictions(
    model,
    processor,
    samples: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    progress: bool = True,
    chunk_length_s: float | None = None,
    stride_length_s: float | Sequence[float] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Decoded outputs for `samples` (rows with `task`, languages, and `audio` or `source_text`), in order.

    Samples are batched by length; under several ranks each rank generates every `world`-th batch and all ranks get
    all outputs. With `chunk_length_s` (at most the processor's `max_audio_seconds`), longer speech is cut into
    chunks (`plan_chunks(..., stride_length_s)`) generated like samples of their own and joined (`merge_chunk_texts`).
    """
    if chunk_length_s is not None:
        pieces, plans = _split_long_samples(samples, processor, chunk_length_s, stride_length_s)
        texts = iter(generate_predictions(model, processor, pieces, batch_size, progress, **generate_kwargs))
        rate = processor.feature_extractor.sampling_rate
        return [
            next(texts) if chunks is None
            else join_texts(merge_chunk_texts([next(texts) for _ in chunks], chunks, rate))
            for chunks in plans
        ]
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    collator = PartDataCollator(processor, with_targets=False)
    lengths = [float(sample.get("duration") or len(sample.get("source_text") or "")) for sample in samples]
    order = sorted(range(len(samples)), key=lengths.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # Every rank runs the same number of generate calls (collective under ZeRO-3): pad with a repeated batch.
    per_rank = -(-len(batches) // world)
    was_training = model.training
    model.eval()
    outputs: dict[int, str] = {}
    device = next(model.parameters()).device
    for step in tqdm(range(per_rank), desc="generating", disable=not progress or rank != 0):
        index = step * world + rank
        batch_indices = batches[index] if index < len(batches) else batches[-1]
        inputs = collator([samples[i] for i in batch_indices]).to(device)
        tokens = model.generate(**inputs, **generate_kwargs)
        if index < len(batches):
            outputs.update(zip(batch_indices, processor.batch_decode(tokens)))
    model.train(was_training)
    if world > 1:
        gathered: list[dict[int, str]] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, outputs)
        outputs = {k: v for part in gathered for k, v in part.items()}
    return [outputs[i] for i in range(len(samples))]


def evaluate_speech_to_text(
    model,
    processor,
    samples: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    metric_key_prefix: str = "test",
    hypothesis_cap: HypothesisCap | Mapping[str, Any] | bool | None = None,
    **kwargs,
) -> tuple[dict[str, float], list[str]]:
    """`(metrics, predictions)`: `generate_predictions(model, processor, samples, batch_size, **kwargs)` (`progress`,
    `chunk_length_s`, `stride_length_s`, generation keywords) scored on each sample's `text` by `compute_speech_metrics`
    (with `hypothesis_cap`), the keys prefixed by `metric_key_prefix` (`test_wer_de`, `test_bleu_de-en`, ...)."""
    missing = [c for c in META_COLUMNS if c not in samples[0]]
    if missing:
        raise ValueError(f"Evaluation samples lack the columns {missing}; each needs {META_COLUMNS}.")
    predictions = generate_predictions(model, processor, samples, batch_size, **kwargs)
    tasks, sources, targets, texts = ([sample[column] for sample in samples] for column in META_COLUMNS)
    metrics = compute_speech_metrics(predictions, texts, tasks, sources, targets, hypothesis_cap=hypothesis_cap)
    return {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}, predictions


def _split_long_samples(
    samples: Sequence[Mapping[str, Any]],
    processor,
    chunk_length_s: float,
    stride_length_s: float | Sequence[float] | None,
) -> tuple[list[Mapping[str, Any]], list[list[Chunk] | None]]:
    """The samples with each speech sample longer than `chunk_length_s` replaced by its chunks (decoded 16 kHz
    arrays), and per sample its chunks (None: kept whole)."""
    limit = processor.effective_max_audio_seconds  # max_audio_seconds, and 30 s for a Whisper encoder
    if not chunk_length_s or chunk_length_s > limit:
        raise ValueError(
            f"chunk_length_s={chunk_length_s!r} must be positive and at most the {limit} s the model takes "
            f"(processor.max_audio_seconds); pass chunk_length_s <= {limit}."
        )
    rate = processor.feature_extractor.sampling_rate
    pieces: list[Mapping[str, Any]] = []
    plans: list[list[Chunk] | None] = []
    for index, sample in enumerate(samples):
        duration, waveform = sample.get("duration"), None
        if sample["task"] != "mt" and (duration is None or duration > chunk_length_s):
            waveform = load_audio(sample["audio"], sample.get("sampling_rate"), target_sampling_rate=rate,
                                  name=f"evaluation sample {index}")
        if waveform is None or len(waveform) <= chunk_length_s * rate:
            pieces.append(sample)
            plans.append(None)
            continue
        chunks = plan_chunks(waveform, chunk_length_s, stride_length_s, sampling_rate=rate)
        plans.append(chunks)
        for chunk in chunks:
            audio = {"array": waveform[chunk.start : chunk.end], "sampling_rate": rate}
            pieces.append({**sample, "audio": audio, "duration": (chunk.end - chunk.start) / rate})
    return pieces, plans


__all__ = ["evaluate_speech_to_text", "generate_predictions"]
