"""The batch collator of PART training: raw mixture samples -> model inputs through `PartProcessor`.

Training and evaluation batches are built by the processor's single prompt path, so the prompts a model is
evaluated with are the ones it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import BatchFeature


class PartDataCollator:
    """Collates samples (`task`, `source_language`, `target_language`, `text`, `audio` or `source_text`).

    A sample's `text` column is its target (passed as the processor's `target_text=`); `source_text` is the input text
    of `mt` samples (the processor's `text=`).

    Args:
        processor: the model's `PartProcessor`.
        with_targets: `True` (training/loss evaluation): prompt + target, with labels, right-padded.
            `False` (generation): prompts only, left-padded.
    """

    def __init__(self, processor, with_targets: bool = True):
        self.processor = processor
        self.with_targets = with_targets

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        if not samples:
            raise ValueError("PartDataCollator got an empty batch.")
        speech = [s["task"] != "mt" for s in samples]
        return self.processor(
            text=[s.get("source_text") if not is_speech else None for s, is_speech in zip(samples, speech)],
            audio=[s.get("audio") if is_speech else None for s, is_speech in zip(samples, speech)],
            task=[s["task"] for s in samples],
            source_language=[s["source_language"] for s in samples],
            target_language=[s.get("target_language") for s in samples],
            target_text=[s["text"] for s in samples] if self.with_targets else None,
            output_labels=self.with_targets,
        )


__all__ = ["PartDataCollator"]
