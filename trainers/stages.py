"""Declarative PART stage schedules: which parameter groups train, on which task mixture, for how long.

A `Schedule` is a list of `Stage`s, loadable from and saved to JSON or YAML. Presets reproduce the paper's
schedule (`part`), the conventional `baseline_2stage` and the paper's three cumulative ablations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from modeling_part.modeling_part import DEFAULT_LORA_CONFIG, PARAMETER_GROUPS
from modeling_part.processing_part import SPEECH_TASKS, TASKS

LLM_GROUPS = ("llm", "llm_lora")
"""Parameter groups inside the LLM: the only ones a text-only task (no audio in the batch) can train."""

@dataclass
class Stage:
    """One alignment stage.

    Args:
        name: a short identifier (used for folders and logs).
        trainable: the parameter groups that train (see `PartForSpeechToText.get_parameter_groups`).
        tasks: task -> sampling weight in this stage (`asr`, `s2tt`, `mt`); components of other tasks are unused.
        languages: if set, only components whose source language is listed are used.
        steps / fraction / epochs: the stage's length; exactly one. `fraction` is a share of the run's
            `max_steps`; `epochs` counts passes over the stage's (map-style) data.
        learning_rate: peak learning rate; `None` keeps the run's `learning_rate`.
        warmup_ratio: share of the stage's steps spent warming up.
        encoder_last_k: how many top encoder layers `encoder_last_k` means.
        lora: LoRA settings (rank, alpha, dropout, targets) when the stage trains `llm_lora`.
        unfreeze_at: progressive unfreezing inside the stage: step (within the stage) -> groups that start training
            then. The optimizer holds them from the start of the stage, so no rebuild is needed.
    """

    name: str
    trainable: list[str]
    tasks: dict[str, float]
    languages: list[str] | None = None
    steps: int | None = None
    fraction: float | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    warmup_ratio: float = 0.05
    encoder_last_k: int = 8
    lora: dict[str, Any] | None = None
    unfreeze_at: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unfreeze_at = {int(step): list(groups) for step, groups in self.unfreeze_at.items()}
        for group in [*self.trainable, *(g for groups in self.unfreeze_at.values() for g in groups)]:
            if group not in PARAMETER_GROUPS:
                raise ValueError(f"Stage {self.name!r}: unknown parameter group {group!r}; choose from {PARAMETER_GROUPS}.")
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
                f"Stage {self.name!r}: text-only tasks {text_only} need a trainable LLM group ({' or '.join(LLM_GROUPS)}):"
                f" a batch of them never reaches {self.trainable}, so it has no gradient. Add 'llm_lora' to trainable"
                " or drop the text-only tasks from this stage."
            )
        if "llm_lora" in self.trainable and self.lora is None:
            self.lora = dict(DEFAULT_LORA_CONFIG)
        if self.encoder_last_k < 1:
            raise ValueError(f"Stage {self.name!r}: encoder_last_k must be at least 1, got {self.encoder_last_k}.")

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
    stages = [Stage("1_adapter", ["adapter"], dict(early), fraction=0.25, learning_rate=1e-3)]
    if progressive:
        stages += [
            Stage("2a_encoder_top", ["adapter", "encoder_last_k"], dict(early), fraction=0.2, learning_rate=3e-4),
            Stage("2b_encoder_full", ["adapter", "encoder"], dict(early), fraction=0.2, learning_rate=2e-4),
        ]
    else:
        stages += [Stage("2_encoder_full", ["adapter", "encoder"], dict(early), fraction=0.4, learning_rate=2e-4)]
    stages.append(
        Stage(
            "3_cross_language" if lora else "3_cross_language_no_lora",
            ["adapter", "encoder", "llm_lora"] if lora else ["adapter", "encoder"],
            cross,
            fraction=0.35,
            learning_rate=2e-4,
        )
    )
    return stages


def preset(name: str, mt_weight: float = 0.25) -> Schedule:
    """A named schedule. Stage lengths are fractions of the run's `max_steps`.

    - `part`: 1 adapter on ASR; 2a + last 8 encoder layers on ASR; 2b + whole encoder on ASR; 3 encoder + adapter +
      LLM LoRA on ASR + S2TT (+ text-only `mt` at `mt_weight`).
    - `baseline_2stage`: LLM frozen; adapter, then adapter + encoder, both on the ASR + S2TT mixture.
    - `no_task_staging`: `part` with ASR + S2TT mixed in every stage.
    - `no_task_staging_no_lora`: ... and no LLM LoRA in stage 3 (so no text-only `mt` either: nothing it could train).
    - `no_task_staging_no_lora_no_progressive`: ... and the whole encoder unfrozen at once after the adapter stage.
    """
    presets = {
        "part": lambda: _part_stages(True, True, True, mt_weight),
        "no_task_staging": lambda: _part_stages(False, True, True, mt_weight),
        "no_task_staging_no_lora": lambda: _part_stages(False, False, True, mt_weight),
        "no_task_staging_no_lora_no_progressive": lambda: _part_stages(False, False, False, mt_weight),
        "baseline_2stage": lambda: [
            Stage("1_adapter", ["adapter"], dict(ASR_S2TT), fraction=0.4, learning_rate=1e-3),
            Stage("2_encoder_adapter", ["adapter", "encoder"], dict(ASR_S2TT), fraction=0.6, learning_rate=2e-4),
        ],
    }
    if name not in presets:
        raise ValueError(f"Unknown schedule preset {name!r}; choose from {sorted(presets)} or pass a JSON/YAML file.")
    return Schedule(name=name, stages=presets[name]())


PRESETS = ("part", "baseline_2stage", "no_task_staging", "no_task_staging_no_lora", "no_task_staging_no_lora_no_progressive")


def load_schedule(name_or_path: str | os.PathLike | Schedule, mt_weight: float = 0.25) -> Schedule:
    """A preset name, a JSON/YAML file, or a Schedule."""
    if isinstance(name_or_path, Schedule):
        return name_or_path
    if os.path.isfile(str(name_or_path)):
        return Schedule.load(name_or_path)
    return preset(str(name_or_path), mt_weight=mt_weight)


__all__ = ["PRESETS", "Schedule", "Stage", "load_schedule", "preset"]
