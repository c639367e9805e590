"""PART training: the stage schedule, the stage trainer, data mixtures, metrics and stage callbacks."""

from .collator import PartDataCollator
from .data import MixtureComponent, MixtureDataset
from .part_trainer import PartTrainer, PartTrainingArguments
from .stages import PRESETS, Schedule, Stage, load_schedule, preset

__all__ = [
    "PRESETS", "MixtureComponent", "MixtureDataset", "PartDataCollator", "PartTrainer", "PartTrainingArguments",
    "Schedule", "Stage", "load_schedule", "preset",
]
