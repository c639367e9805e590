"""Keeps the ranks of a multi-rank run in step when one rank's batch has no audio (task `mt`).

ZeRO-3 gathers each module's weights collectively when it runs, and gradient reduction expects gradients of the same
parameters from every rank. `AudioPathOnEveryRank` hooks into the model (inside DDP's and DeepSpeed's forward): on a
text-only batch it runs the audio path on a short silent clip where an audio batch runs it and adds
`0 * sum(output)` to the LLM's input embeddings, so every rank runs and fetches the same modules in the same order
(docs/scaling.md). `PartTrainer` attaches it; outside the trainer, `AudioPathOnEveryRank(processor).attach(model)`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

SILENT_CLIP_SECONDS = 0.5


def audio_path_needed(model: nn.Module) -> bool:
    """Whether a text-only batch must still run the encoder and the adapter: several ranks, and ZeRO-3 (collective
    weight gathering, also without gradients) or trainable audio weights (gradient reduction)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return True
    return torch.is_grad_enabled() and any(
        p.requires_grad for module in (model.audio_tower, model.adapter) for p in module.parameters()
    )


class AudioPathOnEveryRank:
    """Forward hooks on a `PartForSpeechToText` that run its audio path on a silent clip for text-only batches when
    `audio_path_needed` (otherwise they do nothing); `processor`'s feature extractor makes the clip's features."""

    def __init__(self, processor):
        extractor = processor.feature_extractor
        silent = np.zeros(int(SILENT_CLIP_SECONDS * extractor.sampling_rate), dtype=np.float32)
        self.silent_features = dict(extractor([silent], return_tensors="pt"))
        self._armed = False

    def attach(self, model: nn.Module) -> list[RemovableHandle]:
        """Registers the hooks on `model` and on its decoder (the LLM without its head; attach again after replacing
        it); returns their handles (`handle.remove()` detaches them)."""
        before_decoder = functools.partial(self._before_decoder, model)
        return [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.get_decoder().register_forward_pre_hook(before_decoder, with_kwargs=True),
            model.register_forward_hook(self._after_forward),
        ]

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """Decides, without running anything (ZeRO-3 starts its forward bookkeeping after this hook), whether this
        forward is a text-only batch that must run the audio path."""
        self._armed = False
        if kwargs.get("input_features") is not None or kwargs.get("input_ids") is None:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:  # a decoding step: no rank runs the audio path
            return
        self._armed = audio_path_needed(model)

    def _before_decoder(self, model: nn.Module, decoder: nn.Module, args: tuple, kwargs: dict):
        """Runs the audio path where an audio batch runs it (after the text embedding, before the LLM) and adds it,
        times zero, to the embeddings the LLM reads."""
        if not self._armed or kwargs.get("inputs_embeds") is None:
            return None
        self._armed = False
        inputs_embeds = kwargs["inputs_embeds"]
        features = {name: value.to(inputs_embeds.device) for name, value in self.silent_features.items()}
        audio = model.get_audio_features(**features, return_dict=True).pooler_output
        kwargs["inputs_embeds"] = inputs_embeds + audio.sum().to(inputs_embeds.dtype) * 0.0
        return args, kwargs

    def _after_forward(self, model: nn.Module, args: tuple, output) -> None:
        self._armed = False


__all__ = ["AudioPathOnEveryRank", "audio_path_needed"]
