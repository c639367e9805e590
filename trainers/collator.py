"""The batch collator of PART training: raw mixture samples -> model inputs through `PartProcessor`'s single prompt
path, so a model is evaluated with the prompts it was trained with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import BatchFeature


class PartDataCollator:
    """Collates samples (`task`, `source_language`, `target_language`, `text` (the target), and `audio` or, for "mt",
    `source_text`) with `processor`, the model's `PartProcessor`: with `with_targets` (training, loss evaluation)
    prompt + target with labels, right-padded; without (generation) prompts only, left-padded. `sampling_rate` is
    that of array audio (paths and Audio dicts carry their own)."""

    def __init__(self, processor, with_targets: bool = True, sampling_rate: int | None = None):
        self.processor = processor
        self.with_targets = with_targets
        self.sampling_rate = sampling_rate

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        if not samples:
            raise ValueError("PartDataCollator got an empty batch.")
        speech = [s["task"] != "mt" for s in samples]
        return self.processor(
            text=[None if is_speech else s.get("source_text") for s, is_speech in zip(samples, speech)],
            audio=[s.get("audio") if is_speech else None for s, is_speech in zip(samples, speech)],
            task=[s["task"] for s in samples],
            source_language=[s["source_language"] for s in samples],
            target_language=[s.get("target_language") for s in samples],
            target_text=[s["text"] for s in samples] if self.with_targets else None,
            output_labels=self.with_targets,
            sampling_rate=self.sampling_rate,
        )


__all__ = ["PartDataCollator"]
