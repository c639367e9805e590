"""Declarative PART stage schedules (which parameter groups train, on which task mixture, for how long), saved as
JSON or YAML; presets reproduce the paper's schedule (`part`), `baseline_2stage` and the paper's three ablations."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from modeling_part.modeling_part import DEFAULT_LORA_CONFIG
from modeling_part.processing_part import SPEECH_TASKS, TASKS

from .freeze import PARAMETER_GROUPS

LLM_GROUPS = ("llm", "llm_lora")
"""Parameter groups inside the LLM: the only ones a text-only task (no audio in the batch) can train."""

@dataclass
class Stage:
    """One alignment stage (docs/training.md): a `name` (folders, logs), the `trainable` parameter groups
    (`trainers.freeze.parameter_groups`), `tasks` (task -> sampling weight; components of other tasks are unused),
    optionally `languages` (source languages of the components used), and exactly one length: `steps`, `fraction` of
    the run's `max_steps`, or `epochs` over the stage's map-style data. The peak learning rate is an absolute
    `learning_rate` or `lr_scale` x `--learning_rate`; the warm-up `warmup_steps` or `warmup_ratio` of the stage's
    steps, else the run's `--warmup_steps`. `encoder_last_k` sets how many top encoder layers that group means,
    `lora` the LoRA settings when `llm_lora` trains, and `unfreeze_at` (step in the stage -> groups) unfreezes groups
    inside the stage, held by the optimizer from its start (not supported with DeepSpeed)."""

    name: str
    trainable: list[str]
    tasks: dict[str, float]
    languages: list[str] | None = None
    steps: int | None = None
    fraction: float | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    lr_scale: float = 1.0
    warmup_ratio: float | None = None
    warmup_steps: int | None = None
    encoder_last_k: int = 8
    lora: dict[str, Any] | None = None
    unfreeze_at: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unfreeze_at = {int(step): list(groups) for step, groups in self.unfreeze_at.items()}
        for group in [*self.trainable, *(g for groups in self.unfreeze_at.values() for g in groups)]:
            if group not in PARAMETER_GROUPS:
                raise ValueError(
                    f"Stage {self.name!r}: unknown parameter group {group!r}; choose from {PARAMETER_GROUPS}."
                )
        if not self.trainable:
            raise ValueError(f"Stage {self.name!r}: trainable is empty; name at least one parameter group.")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks:
            raise ValueError(f"Stage {self.name!r}: tasks {sorted(self.tasks)} must be a non-empty subset of {TASKS}.")
        if any(not (w > 0 and math.isfinite(w)) for w in self.tasks.values()):
            raise ValueError(f"Stage {self.name!r}: task weights must be positive, got {self.tasks}.")
        lengths = [x for x in (self.steps, self.fraction, self.epochs) if x is not None]
        if len(lengths) != 1 or lengths[0] <= 0:
            raise ValueError(
                f"Stage {self.name!r}: give exactly one positive length: steps, fraction (of max_steps) or epochs."
            )
        text_only = sorted(set(self.tasks) - set(SPEECH_TASKS))
        if text_only and not set(LLM_GROUPS) & set(self.trainable):
            raise ValueError(
                f"Stage {self.name!r}: text-only tasks {text_only} need a trainable LLM group "
                f"({' or '.join(LLM_GROUPS)}): a batch of them never reaches {self.trainable}, so it has no gradient. "
                "Add 'llm_lora' to trainable or drop the text-only tasks from this stage."
            )
        if "llm_lora" in self.trainable and self.lora is None:
            self.lora = dict(DEFAULT_LORA_CONFIG)
        if self.encoder_last_k < 1:
            raise ValueError(f"Stage {self.name!r}: encoder_last_k must be at least 1, got {self.encoder_last_k}.")
        if not (self.lr_scale > 0 and math.isfinite(self.lr_scale)):
            raise ValueError(f"Stage {self.name!r}: lr_scale must be a positive number, got {self.lr_scale}.")
        if self.learning_rate is not None:
            if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
                raise ValueError(f"Stage {self.name!r}: learning_rate must be positive, got {self.learning_rate}.")
            if self.lr_scale != 1.0:
                raise ValueError(
                    f"Stage {self.name!r}: give learning_rate (absolute, overrides --learning_rate) or lr_scale "
                    f"(a multiple of --learning_rate), not both; got learning_rate={self.learning_rate}, "
                    f"lr_scale={self.lr_scale}."
                )
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(
                f"Stage {self.name!r}: give warmup_steps or warmup_ratio, not both (neither: the run's --warmup_steps)."
            )
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"Stage {self.name!r}: warmup_ratio is a share of the stage's steps in [0, 1], "
                             f"got {self.warmup_ratio}.")
        if self.warmup_steps is not None and (int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0):
            raise ValueError(f"Stage {self.name!r}: warmup_steps must be a whole number >= 0, got {self.warmup_steps}.")

    def peak_learning_rate(self, run_learning_rate: float) -> tuple[float, str]:
        """The stage's peak learning rate given the run's `--learning_rate`, and how it was chosen (for logs)."""
        if self.learning_rate is not None:
            return self.learning_rate, f"the stage's own learning_rate; --learning_rate {run_learning_rate:g} unused"
        return run_learning_rate * self.lr_scale, f"= --learning_rate {run_learning_rate:g} x {self.lr_scale:g}"

    def num_warmup_steps(self, steps: int, run_warmup_steps: float) -> tuple[int, str]:
        """The stage's warm-up steps (of its `steps`) given the run's `--warmup_steps`, and how they were chosen."""
        if self.warmup_steps is not None:
            return int(self.warmup_steps), "the stage's own warmup_steps"
        if self.warmup_ratio is not None:
            return int(self.warmup_ratio * steps), f"the stage's own warmup_ratio {self.warmup_ratio:g} x {steps} steps"
        if run_warmup_steps >= 1:
            return int(run_warmup_steps), f"--warmup_steps {run_warmup_steps:g}"
        return int(run_warmup_steps * steps), f"= --warmup_steps {run_warmup_steps:g} x {steps} steps"

    @property
    def later_groups(self) -> list[str]:
        """Groups that start training inside the stage (progressive unfreezing)."""
        return sorted({g for groups in self.unfreeze_at.values() for g in groups} - set(self.trainable))

    def num_steps(self, max_steps: int, num_samples: int | None = None, batch_size: int | None = None) -> int:
        """The stage's length in optimizer steps."""
        if self.steps is not None:
            return int(self.steps)
        if self.fraction is not None:
            if max_steps is None or max_steps <= 0:
                raise ValueError(f"Stage {self.name!r} is given as a fraction of max_steps: set --max_steps.")
            return max(1, round(self.fraction * max_steps))
        if not num_samples or not batch_size:
            raise ValueError(
                f"Stage {self.name!r} is given in epochs, which needs map-style data of known size; use steps instead."
            )
        return max(1, math.ceil(self.epochs * num_samples / batch_size))


@dataclass
class Schedule:
    """An ordered list of stages, with a name."""

    name: str
    stages: list[Stage]

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"Schedule {self.name!r}: stage names must be unique and non-empty, got {names}.")
        lora_settings = {json.dumps(s.lora, sort_keys=True) for s in self.stages if "llm_lora" in s.trainable}
        if len(lora_settings) > 1:
            raise ValueError(f"Schedule {self.name!r}: all stages that train llm_lora must share one LoRA setting.")

    @property
    def lora(self) -> dict[str, Any] | None:
        """The LoRA settings of the schedule (the LoRA is attached before the first stage, frozen until used)."""
        return next((s.lora for s in self.stages if "llm_lora" in s.trainable), None)

    def check_covers(self, components, hint: str = "") -> None:
        """Every stage must find data: some component (anything with `name`, `task` and `source_language`, e.g. a
        `MixtureComponent`) of one of the stage's tasks and, when the stage names languages, one of them. The error
        lists what the data gives, then `hint` (what the caller can add)."""
        for stage in self.stages:
            if not any(
                c.task in stage.tasks and (stage.languages is None or c.source_language in stage.languages)
                for c in components
            ):
                available = sorted({c.name for c in components})
                raise ValueError(
                    f"Stage {stage.name!r} of schedule {self.name!r} samples tasks {sorted(stage.tasks)}"
                    f"{'' if stage.languages is None else f' in {stage.languages}'}, but the training data only gives "
                    f"{available}. {hint}".rstrip()
                )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stages": [dataclasses.asdict(s) for s in self.stages]}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the schedule as YAML (`.yaml`/`.yml`) or JSON (anything else)."""
        path = str(path)
        with open(path, "w", encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                yaml.safe_dump(self.to_dict(), f, sort_keys=False, allow_unicode=True)
            else:
                json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schedule:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) if str(path).endswith((".yaml", ".yml")) else json.load(f)
        return cls(**data)


# --------------------------------------------------------------------------------------------------- presets
ASR = {"asr": 1.0}
ASR_S2TT = {"asr": 1.0, "s2tt": 1.0}


def _part_stages(staged_tasks: bool, lora: bool, progressive: bool, mt_weight: float) -> list[Stage]:
    # Text-only `mt` can only train the LLM (LoRA); without LoRA it has nothing to train, so it is left out.
    cross = {"asr": 1.0, "s2tt": 1.0, **({"mt": mt_weight} if mt_weight > 0 and lora else {})}
    early = ASR if staged_tasks else ASR_S2TT
    stages = [Stage("1_adapter", ["adapter"], dict(early), fraction=0.25)]
    if progressive:
        stages += [Stage("2a_encoder_top", ["adapter", "encoder_last_k"], dict(early), fraction=0.2, lr_scale=0.3),
                   Stage("2b_encoder_full", ["adapter", "encoder"], dict(early), fraction=0.2, lr_scale=0.2)]
    else:
        stages += [Stage("2_encoder_full", ["adapter", "encoder"], dict(early), fraction=0.4, lr_scale=0.2)]
    name, trainable = ("3_cross_language", ["adapter", "encoder", "llm_lora"]) if lora else (
        "3_cross_language_no_lora", ["adapter", "encoder"])
    return [*stages, Stage(name, trainable, cross, fraction=0.35, lr_scale=0.2)]


_PRESETS = {  # (staged tasks, LoRA, progressive encoder) of `_part_stages`, or the baseline's own stages
    "part": (True, True, True),
    "baseline_2stage": None,
    "no_task_staging": (False, True, True),
    "no_task_staging_no_lora": (False, False, True),
    "no_task_staging_no_lora_no_progressive": (False, False, False),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, mt_weight: float = 0.25) -> Schedule:
    """A named schedule of `PRESETS` (described in docs/training.md): stage lengths are fractions of the run's
    `max_steps`, peak learning rates multiples of its `--learning_rate` (1 for the adapter stage, 0.3 when the top
    encoder layers join, 0.2 for the whole encoder and the cross-language stage), warm-up its `--warmup_steps`;
    `mt_weight` weighs the text-only `mt` task in the cross-language stage."""
    if name not in _PRESETS:
        raise ValueError(f"Unknown schedule preset {name!r}; choose from {sorted(_PRESETS)} or pass a JSON/YAML file.")
    if _PRESETS[name] is not None:
        return Schedule(name=name, stages=_part_stages(*_PRESETS[name], mt_weight))
    return Schedule(name=name, stages=[
        Stage("1_adapter", ["adapter"], dict(ASR_S2TT), fraction=0.4),
        Stage("2_encoder_adapter", ["adapter", "encoder"], dict(ASR_S2TT), fraction=0.6, lr_scale=0.2),
    ])


def load_schedule(name_or_path: str | os.PathLike | Schedule, mt_weight: float = 0.25) -> Schedule:
    """A preset name, a JSON/YAML file, or a Schedule."""
    if isinstance(name_or_path, Schedule):
        return name_or_path
    if os.path.isfile(str(name_or_path)):
        return Schedule.load(name_or_path)
    return preset(str(name_or_path), mt_weight=mt_weight)


__all__ = ["PRESETS", "Schedule", "Stage", "load_schedule", "preset"]
