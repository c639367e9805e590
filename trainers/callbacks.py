"""Callbacks for staged PART training: `PartStageCallback` adds stage events to the Trainer's callbacks;
`GradientSimilarityCallback` measures the paper's Fig. 3 analysis (gradient cosine similarity of (task, language)
probes at each stage's end, with heatmaps); `StageEvaluationCallback` scores held-out samples after each stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from transformers import BatchFeature, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from .freeze import parameter_numel

from .collator import PartDataCollator


logger = logging.get_logger(__name__)

SIMILARITY_FILE = "gradient_similarity"
"""File stem of each stage's matrix (`.json`) and heatmap (`.png`), written into the stage folder."""
STAGE_METRICS_FILE = "generation_metrics.json"
"""File name of a stage's held-out generation metrics (`StageEvaluationCallback`), in the stage folder."""


class PartStageCallback(TrainerCallback):
    """A `TrainerCallback` that also hears about the stages of a PART schedule; the stage events do nothing by default.

    `PartTrainer` calls them on every rank with the usual callback keywords (`model` is the unwrapped model) plus
    `stage` (at least `.name`), `stage_index` (from 0), `stage_dir` (the stage's artefact folder) and, under
    DeepSpeed, `model_wrapped` (the engine); `on_schedule_end` gets `output_dir`, the run's folder.
    """

    def on_stage_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Called before a stage trains, after its parameter groups have been made trainable."""

    def on_stage_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Called after a stage has trained, with its parameter groups still trainable."""

    def on_schedule_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Called once after the last stage, before the final model is saved."""


def write_json(path: str | Path, data: Any) -> None:
    """Writes `data` as JSON atomically (a crash leaves no half-written file); its folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


@dataclass(frozen=True)
class GradientSimilarity:
    """The gradient cosine similarities of one stage: `matrix[i, j]` for `labels` i and j (NaN in the rows and
    columns of a probe whose gradient is zero), over `compared_parameters` of `trainable_parameters` elements."""

    stage: str
    labels: list[str]
    matrix: np.ndarray
    trainable_parameters: int
    compared_parameters: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; NaN entries become None."""
        matrix = [[None if math.isnan(value) else float(value) for value in row] for row in self.matrix]
        return {**dataclasses.asdict(self), "labels": list(self.labels), "matrix": matrix}


def build_probe_batches(
    processor: Any, samples_by_label: Mapping[str, Sequence[Mapping[str, Any]]], *, sampling_rate: int | None = None
) -> dict[str, BatchFeature]:
    """One training batch (with labels) per probe label such as "asr/de" or "s2tt/de-en", for
    `GradientSimilarityCallback`, from a few samples per label as `PartDataCollator` takes them; `sampling_rate`
    is that of array audio."""
    if not samples_by_label:
        raise ValueError("samples_by_label is empty; give at least one label, e.g. {'asr/en': [sample, ...]}.")
    collate = PartDataCollator(processor, sampling_rate=sampling_rate)
    batches = {}
    for label, samples in samples_by_label.items():
        if not samples:
            raise ValueError(f"Probe label {label!r} has no samples; give it at least one sample dict.")
        required = ("task", "source_language", "text")
        missing = sorted({key for sample in samples for key in required if key not in sample})
        if missing:
            raise ValueError(
                f"Probe samples of {label!r} lack {missing}; each needs 'task', 'source_language', 'target_language', "
                "'text' and 'audio' (speech tasks) or 'source_text' ('mt')."
            )
        try:
            batches[label] = collate(samples)
        except ValueError as error:
            raise ValueError(f"Probe samples of {label!r}: {error}") from error
    return batches


class GradientSimilarityCallback(PartStageCallback):
    """The paper's Fig. 3 analysis: at each stage's end, the cosine similarity between the trainable parameters'
    gradients of each pair of `probe_batches` (one batch with `labels` per (task, language) label, e.g. from
    `build_probe_batches`), in eval mode, each probe's loss alone; a plain model's modes and `.grad` are restored.
    Under DeepSpeed ZeRO-3 (the engine as `model_wrapped`) the engine's gradients are left zeroed, as after a step.

    Each stage's `GradientSimilarity` goes to `results[stage.name]` and, on the main process, to
    `<output_name>.json` (and `.png` if `plot`) in the stage folder; the schedule's end plots all stages side by
    side (`<output_name>_stages.png`). `max_parameters` compares a random subset (drawn with `seed`) of at most
    that many gradient elements to bound memory; None compares all.
    """

    def __init__(
        self,
        probe_batches: Mapping[str, Mapping[str, torch.Tensor]],
        *,
        max_parameters: int | None = None,
        seed: int = 0,
        output_name: str = SIMILARITY_FILE,
        plot: bool = True,
    ) -> None:
        if len(probe_batches) < 2:
            raise ValueError(
                f"GradientSimilarityCallback needs at least two probe batches to compare, got {list(probe_batches)}; "
                "give one batch per (task, language) label, e.g. 'asr/en' and 'asr/de'."
            )
        for label, batch in probe_batches.items():
            labels = batch.get("labels")
            if labels is None:
                raise ValueError(
                    f"Probe batch {label!r} has no 'labels', so it has no loss; build it with the targets, e.g. "
                    "processor(..., target_text=[...], output_labels=True) or build_probe_batches."
                )
            if not bool((labels != -100).any()):
                raise ValueError(f"Probe batch {label!r} has only -100 labels; give its samples non-empty targets.")
        if max_parameters is not None and max_parameters < 1:
            raise ValueError(f"max_parameters={max_parameters} must be a positive integer, or None to compare all.")
        self.probe_batches = dict(probe_batches)
        self.max_parameters, self.seed, self.output_name, self.plot = max_parameters, seed, output_name, plot
        self.results: dict[str, GradientSimilarity] = {}

    def compute(self, model: nn.Module) -> tuple[list[str], np.ndarray]:
        """The probe labels and their gradient cosine similarity matrix (float64), for the currently trainable
        parameters of `model` (a module, or a DeepSpeed engine)."""
        result = self.measure(model)
        return result.labels, result.matrix

    def measure(self, model: nn.Module, stage: str = "") -> GradientSimilarity:
        """`compute` with the parameter counts, as a `GradientSimilarity` named `stage`."""
        engine, module = _split_engine(model)
        parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
        if not parameters:
            raise ValueError("The model has no trainable parameters; make the stage's groups trainable (set_trainable)")
        if engine is not None and (zero_stage := engine.zero_optimization_stage()) != 3:
            raise ValueError(
                f"Gradient similarity under DeepSpeed needs ZeRO stage 3, got stage {zero_stage}; run the analysis "
                "with zero_optimization.stage=3 or without DeepSpeed."
            )
        if engine is None and any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in parameters):
            raise ValueError(
                "The model's gradients are managed by a DeepSpeed optimizer, which reduces them only through the "
                "engine; pass the DeepSpeed engine (Trainer.model_wrapped) instead of the module (ZeRO stage 3 is "
                "supported)."
            )
        sizes = [parameter_numel(parameter) for parameter in parameters]
        selections = self._selections(sizes)
        device = engine.device if engine is not None else next(module.parameters()).device
        modes = {submodule: submodule.training for submodule in module.modules()}
        saved_grads = None if engine is not None else [parameter.grad for parameter in parameters]
        vectors = []
        try:
            module.eval()
            for batch in self.probe_batches.values():
                inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
                _zero_gradients(parameters, engine)
                with torch.enable_grad():
                    loss = model(**inputs).loss  # the engine, or the module itself
                # A loss without grad_fn reaches no trainable parameter: its gradient stays zero.
                if loss.requires_grad and engine is not None:
                    engine.backward(loss, scale_wrt_gas=False)
                elif loss.requires_grad:
                    loss.backward()
                vectors.append(_flat_gradient(parameters, selections, deepspeed=engine is not None))
        finally:
            if engine is not None:
                _zero_gradients(parameters, engine)
            else:
                for parameter, grad in zip(parameters, saved_grads):
                    parameter.grad = grad
            for submodule, training in modes.items():
                submodule.training = training
        labels = list(self.probe_batches)
        return GradientSimilarity(stage, labels, _cosine_similarity(torch.stack(vectors), labels), sum(sizes),
                                  len(vectors[0]))

    def on_stage_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, *, model: nn.Module, stage: Any,
        stage_dir: str, **kwargs: Any,
    ) -> None:
        """Compute the stage's matrix on every process; the main process writes its JSON and heatmap."""
        wrapped = kwargs.get("model_wrapped")
        result = self.measure(wrapped if _split_engine(wrapped)[0] is not None else model, stage.name)
        self.results[stage.name] = result
        if not state.is_world_process_zero:
            return
        folder = Path(stage_dir)
        write_json(folder / f"{self.output_name}.json", result.to_dict())
        if self.plot:
            plot_gradient_similarity(result, folder / f"{self.output_name}.png")
        logger.info(f"Stage {stage.name!r}: gradient similarity of {len(result.labels)} probes written to {folder}.")

    def on_schedule_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, *, output_dir: str, **kwargs: Any
    ) -> None:
        """The main process writes the combined figure of all stages (the paper's Fig. 3 shape) into `output_dir`."""
        if self.plot and self.results and state.is_world_process_zero:
            plot_gradient_similarity(self.results, Path(output_dir) / f"{self.output_name}_stages.png")

    def _selections(self, sizes: list[int]) -> list[torch.Tensor | None]:
        """Per parameter, the flat indices of its compared elements (None: all of them)."""
        total = sum(sizes)
        if self.max_parameters is None or self.max_parameters >= total:
            return [None] * len(sizes)
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randint(total, (self.max_parameters,), generator=generator).unique()  # sorted, repeats dropped
        bounds = np.cumsum([0, *sizes]).tolist()
        cuts = torch.searchsorted(chosen, torch.tensor(bounds)).tolist()
        return [chosen[cuts[index] : cuts[index + 1]] - bounds[index] for index in range(len(sizes))]


def _split_engine(model: nn.Module) -> tuple[Any | None, nn.Module]:
    """(DeepSpeed engine or None, the module it wraps or the model itself)."""
    is_engine = callable(getattr(model, "backward", None)) and isinstance(getattr(model, "module", None), nn.Module)
    return (model, model.module) if is_engine else (None, model)


def _zero_gradients(parameters: Sequence[nn.Parameter], engine: Any | None) -> None:
    """Clear the gradients; under DeepSpeed also zero the partitioned ones, which a backward that does not reach a
    parameter would leave stale."""
    if engine is None:
        for parameter in parameters:
            parameter.grad = None
        return
    from deepspeed.utils import safe_set_full_grad

    engine.optimizer.zero_grad()  # ZeRO-3: the next backward overwrites the partitions instead of accumulating
    for parameter in parameters:
        shape = parameter.ds_shape if hasattr(parameter, "ds_id") else parameter.shape
        safe_set_full_grad(parameter, torch.zeros(shape, dtype=torch.float32, device=engine.device))


def _flat_gradient(
    parameters: Sequence[nn.Parameter], selections: Sequence[torch.Tensor | None], *, deepspeed: bool
) -> torch.Tensor:
    """The selected gradient elements of all `parameters` as one float32 CPU vector; a missing gradient is zero."""
    if deepspeed:
        from deepspeed.utils import safe_get_full_grad
    pieces = []
    for parameter, selection in zip(parameters, selections):
        grad = safe_get_full_grad(parameter) if deepspeed else parameter.grad
        if grad is None:
            pieces.append(torch.zeros(parameter_numel(parameter) if selection is None else len(selection)))
            continue
        grad = grad.detach().reshape(-1)
        if selection is not None:
            grad = grad[selection.to(grad.device)]
        pieces.append(grad.to(device="cpu", dtype=torch.float32))
    return torch.cat(pieces)


def _cosine_similarity(vectors: torch.Tensor, labels: Sequence[str]) -> np.ndarray:
    """Pairwise cosine similarity of the rows (one per label); NaN for rows of norm zero."""
    norms = vectors.norm(dim=1, keepdim=True)
    for index in torch.nonzero(norms.squeeze(1) == 0).flatten().tolist():
        logger.warning(
            f"Probe {labels[index]!r} has a zero gradient on the trainable parameters (its task does not use them); "
            "its similarities are NaN."
        )
    units = vectors / norms
    return (units @ units.T).clamp(-1.0, 1.0).double().numpy()


def plot_gradient_similarity(
    results: GradientSimilarity | Mapping[str, GradientSimilarity], path: str | Path
) -> Path:
    """Write one stage's heatmap, or one per stage side by side in `results` order (the paper's Fig. 3), as a PNG;
    colours from -1 (blue) through 0 (white) to 1 (red). Returns the path."""
    single = isinstance(results, GradientSimilarity)
    results = [results] if single else list(results.values())
    if not results:
        raise ValueError("results is empty; compute at least one stage's GradientSimilarity before plotting.")
    side = 2.0 + 0.6 * max(len(result.labels) for result in results)
    figure = Figure(figsize=(side * len(results) + 1.0, side + (0.0 if single else 0.5)), layout="constrained")
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    for stage_axes, result in zip(axes, results):
        image = stage_axes.imshow(np.ma.masked_invalid(result.matrix), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ticks = range(len(result.labels))
        stage_axes.set_xticks(ticks, result.labels, rotation=45, ha="right", rotation_mode="anchor")
        stage_axes.set_yticks(ticks, result.labels)
        font_size = max(5, 10 - len(result.labels) // 3)
        for row, column in np.ndindex(result.matrix.shape):
            value = result.matrix[row, column]
            stage_axes.text(column, row, "n/a" if math.isnan(value) else f"{value:.2f}", ha="center", va="center",
                            color="white" if abs(value) > 0.6 else "black", fontsize=font_size)
        stage_axes.set_title(f"Gradient cosine similarity: {result.stage}" if single else result.stage)
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    if not single:
        figure.suptitle("Gradient cosine similarity by stage")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return Path(path)


class StageEvaluationCallback(PartStageCallback):
    """What each stage adds: at the end of the named `stages` (None: all), scores held-out `samples` (collator rows)
    with `trainer.evaluate_generation` (`metric_key_prefix`, `generate_kwargs`) on every process and writes the
    metrics to `<stage folder>/generation_metrics.json` from the main one; `read_stage_metrics` collects them. A
    stage whose file exists (a resumed run) is not evaluated again."""

    def __init__(
        self,
        samples: Sequence[Mapping[str, Any]],
        stages: Sequence[str] | None = None,
        metric_key_prefix: str = "test",
        **generate_kwargs: Any,
    ) -> None:
        if not samples:
            raise ValueError("StageEvaluationCallback needs held-out samples to score each stage on, got none.")
        self.samples = samples
        self.stages = None if stages is None else set(stages)
        self.metric_key_prefix = metric_key_prefix
        self.generate_kwargs = generate_kwargs

    def on_stage_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, *, stage: Any, stage_dir: str,
        **kwargs: Any,
    ) -> None:
        path = Path(stage_dir) / STAGE_METRICS_FILE
        if (self.stages is not None and stage.name not in self.stages) or path.exists():
            return
        metrics, _ = kwargs["trainer"].evaluate_generation(
            self.samples, metric_key_prefix=self.metric_key_prefix, **self.generate_kwargs
        )
        if state.is_world_process_zero:
            write_json(path, {"stage": stage.name, "metrics": metrics})


def read_stage_metrics(output_dir: str | Path) -> dict[str, dict[str, float]]:
    """`{stage name: metrics}` from the `generation_metrics.json` files of a run's stage folders, in stage order."""
    folders = sorted(Path(output_dir).glob("stage-*-*"), key=lambda folder: int(folder.name.split("-")[1]))
    records = [json.loads(path.read_text("utf-8")) for f in folders if (path := f / STAGE_METRICS_FILE).exists()]
    return {record["stage"]: record["metrics"] for record in records}


__all__ = [
    "GradientSimilarity",
    "GradientSimilarityCallback",
    "PartStageCallback",
    "StageEvaluationCallback",
    "build_probe_batches",
    "plot_gradient_similarity",
    "read_stage_metrics",
]
