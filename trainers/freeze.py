"""The stage freeze plan: PART's parameter groups, which of them train, and frozen modules kept in eval mode."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

PARAMETER_GROUPS = ("adapter", "encoder_last_k", "encoder", "llm", "llm_lora")


def parameter_numel(parameter: torch.Tensor) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it (`numel()` is then 0)."""
    return int(parameter.ds_numel) if hasattr(parameter, "ds_id") else parameter.numel()


def parameter_groups(model: nn.Module, encoder_last_k: int = 8) -> dict[str, dict[str, nn.Parameter]]:
    """`model`'s parameters by group name: `adapter`, `encoder_last_k` (the encoder's last `encoder_last_k` layers and
    any norm after them), `encoder` (all of it), `llm` (the LLM's own weights), `llm_lora` (empty without LoRA)."""
    groups: dict[str, dict[str, nn.Parameter]] = {name: {} for name in PARAMETER_GROUPS}
    for name, parameter in model.named_parameters():
        if name.startswith("adapter."):
            groups["adapter"][name] = parameter
        elif name.startswith("audio_tower."):
            groups["encoder"][name] = parameter
        elif ".lora_" in name:
            groups["llm_lora"][name] = parameter
        else:
            groups["llm"][name] = parameter
    layers = getattr(model.audio_tower, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model.audio_tower).__name__} has no `layers` ModuleList, so its last k layers cannot be selected; "
            "use the 'encoder' parameter group instead of 'encoder_last_k'."
        )
    if encoder_last_k < 1:
        raise ValueError(f"encoder_last_k={encoder_last_k} must be at least 1.")
    first_top_layer = max(0, len(layers) - encoder_last_k)  # an encoder shallower than k trains whole
    layer_ids = {id(p): index for index, layer in enumerate(layers) for p in layer.parameters()}
    groups["encoder_last_k"] = {
        name: p for name, p in groups["encoder"].items() if layer_ids.get(id(p), len(layers)) >= first_top_layer
    }
    return groups


def set_trainable(model: nn.Module, groups: Iterable[str], encoder_last_k: int = 8) -> dict[str, int]:
    """Makes exactly the named parameter groups of `model` trainable and freezes everything else; returns parameter
    counts: `{"trainable": ..., "total": ..., <group>: ...}`."""
    groups = list(groups)
    unknown = sorted(set(groups) - set(PARAMETER_GROUPS))
    if unknown:
        raise ValueError(f"Unknown parameter group(s) {unknown}; choose from {list(PARAMETER_GROUPS)}.")
    available = parameter_groups(model, encoder_last_k)
    if "llm_lora" in groups and not available["llm_lora"]:
        raise ValueError("Parameter group 'llm_lora' is empty: call add_lora() before training the LLM's LoRA.")
    trainable = {id(p) for group in groups for p in available[group].values()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    counts = {group: sum(parameter_numel(p) for p in available[group].values()) for group in groups}
    counts["trainable"] = sum(parameter_numel(p) for p in model.parameters() if p.requires_grad)
    counts["total"] = sum(parameter_numel(p) for p in model.parameters())
    if model.training:  # newly trainable modules back to train mode, frozen ones to eval
        frozen_modules_to_eval(model.train())
    return counts


def frozen_modules_to_eval(module: nn.Module) -> None:
    """Puts the submodules whose parameters are all frozen in eval mode (no dropout drift in frozen parts); the
    trainer calls it after each `model.train()`."""
    for child in module.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()
        else:
            frozen_modules_to_eval(child)
