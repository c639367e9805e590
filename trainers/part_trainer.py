"""PartTrainer: a `transformers.Trainer` that runs a PART stage schedule in one `train()` call.

Each stage is one run of the Trainer's own loop in its own folder `output_dir/stage-<i>-<name>/`, with a copy of the
run's arguments (folder, length, learning rate), its freeze plan and data mixture, and a new optimizer, scheduler and
model wrapper for its trainable set; `load_best_model_at_end` applies per stage. Checkpoints are written to a staging
folder and renamed into place; `resume_from_checkpoint=True` finds the last complete one of the whole schedule. The
Trainer internals this relies on are listed in docs/design.md.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model, is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, sort_checkpoints
from transformers.utils import logging

from .callbacks import PartStageCallback, write_json
from .collator import PartDataCollator
from .data import (
    AudioLengthValidator, LengthGrouping, MixtureComponent, MixtureDataset, TokenBudget, processor_positions,
)
from .evaluation import evaluate_speech_to_text
from .freeze import frozen_modules_to_eval, parameter_groups, set_trainable
from .metrics import HypothesisCap
from .rank_alignment import AudioPathOnEveryRank
from .stages import PRESETS, Schedule, Stage, load_schedule

logger = logging.get_logger(__name__)

STAGE_COMPLETE = "stage_complete.json"
STAGE_MODEL_DIR = "stage_model"
SUMMARY_NAME = "training_summary.json"
_STAGING_DIR = ".incomplete"


@dataclass
class PartTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the PART options; all work from the command line through `HfArgumentParser`."""

    schedule: str = field(
        default="part",
        metadata={"help": f"A preset ({', '.join(PRESETS)}) or a JSON/YAML schedule file."},
    )
    mt_weight: float = field(default=0.25, metadata={"help": "Weight of text-only MT in the presets' last stage."})
    mixture_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature T over components: p ∝ (weight · size)^(1/T)."}
    )
    size_proportional_sampling: bool = field(
        default=True, metadata={"help": "Weight components by their size (map-style data) before the temperature."}
    )
    length_grouping_batches: int = field(
        default=0, metadata={"help": "Group samples of similar length over this many batches (0: off)."}
    )
    max_tokens_per_batch: int = field(
        default=0,
        metadata={"help": "Token-budget batches: LLM positions per device batch, padded (batch size x longest prompt "
                  "+ audio + target). 0: fixed batches of per_device_train_batch_size. See docs/batching.md."},
    )
    max_audio_seconds_per_batch: float = field(
        default=0.0, metadata={"help": "Token-budget batches: audio seconds per device batch, padded (0: no limit)."}
    )
    max_samples_per_batch: int = field(
        default=0, metadata={"help": "Token-budget batches: at most this many samples per batch (0: no cap)."}
    )
    batch_buckets: int = field(
        default=0,
        metadata={"help": "Token-budget batches: 0 cuts each sorted buffer into neighbours; k > 0 draws from k "
                  "length buckets (more varied batches, more padding)."},
    )
    batch_buffer_size: int = field(
        default=2000, metadata={"help": "Token-budget batches: samples sorted and cut into batches together."}
    )
    skip_invalid_samples: bool = field(
        default=False, metadata={"help": "Skip (count and log) samples that fail to decode instead of raising."}
    )
    drop_long_audio: bool = field(
        default=False,
        metadata={"help": "Drop speech samples longer than the processor's max_audio_seconds (counted per component "
                  "in the stage summary's skipped_samples as '<component> (audio over N s)') instead of stopping at "
                  "the first with an error. Nothing is ever truncated."},
    )
    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Peak learning rate of a stage with lr_scale 1 (the presets' first stage); the presets' "
                  "later stages use 0.3x and 0.2x of it. A stage's own learning_rate overrides it. Default 1e-3, the "
                  "paper's."},
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={"help": "Warm-up of every stage that sets none of its own: an integer >= 1 is that many steps in "
                  "each stage, a number in [0, 1) that share of each stage's steps (rounded down)."},
    )
    lora_r: int | None = field(default=None, metadata={"help": "Override the schedule's LoRA rank."})
    lora_alpha: float | None = field(default=None, metadata={"help": "Override the schedule's LoRA alpha."})
    lora_dropout: float | None = field(default=None, metadata={"help": "Override the schedule's LoRA dropout."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator reads raw samples."})

    def __post_init__(self):
        # The mixture is an iterable dataset with variable-length batches: every rank reads its own shard
        # (accelerate's batch dispatching from rank 0 cannot concatenate batches of different lengths).
        if self.accelerator_config is None or isinstance(self.accelerator_config, dict):
            self.accelerator_config = {"dispatch_batches": False, **(self.accelerator_config or {})}
        super().__post_init__()
        if self.uses_token_budget and self.length_grouping_batches > 0:
            raise ValueError(
                "length_grouping_batches groups fixed-size batches; token-budget batches (max_tokens_per_batch / "
                "max_audio_seconds_per_batch) are cut from length-sorted buffers already: set "
                "length_grouping_batches=0."
            )

    @property
    def uses_token_budget(self) -> bool:
        """Whether batches are filled up to a budget (`max_tokens_per_batch` / `max_audio_seconds_per_batch`)."""
        return self.max_tokens_per_batch > 0 or self.max_audio_seconds_per_batch > 0

    def lora_overrides(self) -> dict[str, Any]:
        """The LoRA settings given on the command line (`lora_r`, `lora_alpha`, `lora_dropout`)."""
        overrides = {"r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout}
        return {k: v for k, v in overrides.items() if v is not None}


class PartTrainer(Trainer):
    """Runs a PART `Schedule` over a multi-task, multi-language mixture.

    Args:
        model: a `PartForSpeechToText`.
        args: `PartTrainingArguments` (`max_steps` is the whole run's budget when stages are given as fractions).
        train_components: the corpora, each a `MixtureComponent` with its task and languages; each stage samples
            from those whose task it names.
        processor: the model's `PartProcessor` (builds batches; saved with the model).
        schedule: a `Schedule`; default `load_schedule(args.schedule)`.
        Other arguments go to `transformers.Trainer`.
    """

    def __init__(
        self,
        model=None,
        args: PartTrainingArguments | None = None,
        train_components: list[MixtureComponent] | None = None,
        processor=None,
        schedule: Schedule | None = None,
        data_collator=None,
        **kwargs,
    ):
        if processor is None:
            raise ValueError("PartTrainer needs the model's PartProcessor (processor=...).")
        self.schedule = schedule or load_schedule(args.schedule, mt_weight=args.mt_weight)
        for stage in self.schedule.stages:  # command-line LoRA settings are part of the recorded schedule
            if stage.lora is not None:
                stage.lora = {**stage.lora, **args.lora_overrides()}
        self.train_components = list(train_components or [])
        self.processor = processor
        self.stage_index: int | None = None
        self.stage_summaries: list[dict[str, Any]] = []
        self._pending_unfreeze: dict[int, list[str]] = {}
        self._waiting_parameters: list[torch.nn.Parameter] = []
        collator = data_collator or PartDataCollator(processor)
        super().__init__(model=model, args=args, data_collator=collator, processing_class=processor, **kwargs)
        # A rank with a text-only batch still runs the audio path, so multi-rank collectives stay aligned.
        self._rank_alignment_hooks = AudioPathOnEveryRank(processor).attach(self.model)
        self._run_args = self.args  # each stage trains with a copy (see `_arguments`); this one is never edited
        self._base_output_dir = self.args.output_dir
        self._check_fsdp()
        if self.train_components:  # without data: evaluation only; train() refuses to run
            self.schedule.check_covers(self.train_components)

    # ------------------------------------------------------------------------------------------------- setup
    def _check_fsdp(self) -> None:
        """FSDP runs as FSDP2, sharded once: it keeps `requires_grad` per parameter, so each stage's freeze plan and
        new optimizer apply to the sharded parameters. Refused: FSDP1 (flat parameters built for one trainable set),
        a sharded state dict type (no stage or final model weights) and `--fsdp` that accelerate left off."""
        if self.args.fsdp and not self.is_fsdp_enabled:
            raise ValueError(
                "--fsdp is set but accelerate did not turn FSDP on: it enables FSDP on GPUs/accelerators only "
                f"(these processes run on {self.args.device.type}). Drop --fsdp to train with DDP here."
            )
        if not self.is_fsdp_enabled:
            return
        plugin = self.accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 2:
            raise ValueError(
                "PartTrainer supports FSDP2 only (fsdp_config version 2, the default); FSDP1's flat parameters are "
                'built for one trainable set. Set "version": 2 in --fsdp_config (examples/configs/fsdp2.json).'
            )
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            raise ValueError(
                f"FSDP state_dict_type {plugin.state_dict_type} writes no model weights in save_model, so the stage "
                'models and the final model would be missing: set "state_dict_type": "FULL_STATE_DICT" in '
                "--fsdp_config (examples/configs/fsdp2.json)."
            )

    def _refresh_fsdp2_mixed_precision(self) -> None:
        """FSDP2 works out each unit's mixed-precision dtypes from the parameters that require grad at its first
        forward only (pytorch/pytorch#186998): a unit frozen then got bf16 gradients for fp32 parameters once a later
        stage trained it. So each stage start (later groups held trainable) reruns torch's `_init_mp_dtypes`."""
        if not self.is_fsdp_enabled or self.accelerator.state.fsdp_plugin.mixed_precision_policy is None:
            return
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                for group in module._get_fsdp_state()._fsdp_param_groups:
                    group._init_mp_dtypes()

    def _stage_components(self, stage: Stage) -> list[MixtureComponent]:
        """The components of the stage's tasks (and languages), weighted by their task's weight in the stage."""
        return [
            dataclasses.replace(component, weight=component.weight * stage.tasks[component.task])
            for component in self.train_components
            if component.task in stage.tasks
            and (stage.languages is None or component.source_language in stage.languages)
        ]

    def _stage_dataset(self, stage_index: int, stage: Stage) -> MixtureDataset:
        grouping = budget = None
        if self.args.uses_token_budget:
            budget = TokenBudget(
                max_tokens=self.args.max_tokens_per_batch or None,
                max_audio_seconds=self.args.max_audio_seconds_per_batch or None,
                max_batch_size=self.args.max_samples_per_batch or None,
                num_buckets=self.args.batch_buckets,
                buffer_size=self.args.batch_buffer_size,
                positions_fn=processor_positions(self.processor),
            )
        elif self.args.length_grouping_batches > 0:
            grouping = LengthGrouping(
                batch_size=self.args.per_device_train_batch_size, buffer_batches=self.args.length_grouping_batches
            )
        return MixtureDataset(
            self._stage_components(stage),
            temperature=self.args.mixture_temperature,
            size_proportional=self.args.size_proportional_sampling,
            seed=self.args.seed + 1000 * stage_index,
            skip_invalid=self.args.skip_invalid_samples,
            validate=AudioLengthValidator(self.processor.effective_max_audio_seconds, self.args.drop_long_audio),
            length_grouping=grouping,
            token_budget=budget,
            rank=0,
            world_size=1,  # the Trainer's data loader shards the stream across ranks
        )

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's loader for fixed-size batches. With a token budget the mixture yields whole batches: the
        loader takes one at a time (`batch_size=1`, the collator unwraps it), so accelerate's `IterableDatasetShard`
        deals whole global batches to the ranks in turn and every rank runs the same number of steps."""
        if not (isinstance(self.train_dataset, MixtureDataset) and self.train_dataset.token_budget is not None):
            return super().get_train_dataloader()
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_size=1,
            collate_fn=functools.partial(_collate_one_batch, self.data_collator),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            multiprocessing_context=args.dataloader_multiprocessing_context,
        )
        return self.accelerator.prepare(loader)

    def _ensure_lora(self) -> None:
        """Attaches the schedule's LoRA before the first stage, so every stage (and checkpoint) has the same
        parameters; it stays frozen and disabled until a stage trains `llm_lora`."""
        if self.schedule.lora is not None and not self.model.has_lora:
            self.model.add_lora(self.schedule.lora)

    def stage_dir(self, index: int) -> str:
        return os.path.join(self._base_output_dir, f"stage-{index}-{self.schedule.stages[index].name}")

    # ------------------------------------------------------------------------------------------------ resume
    def _resume_point(self, resume_from_checkpoint) -> tuple[int, str | None]:
        """(first stage to run, checkpoint inside it or None)."""
        if not resume_from_checkpoint:
            return 0, None
        if isinstance(resume_from_checkpoint, str):
            for index in range(len(self.schedule.stages)):
                if os.path.abspath(resume_from_checkpoint).startswith(os.path.abspath(self.stage_dir(index)) + os.sep):
                    return index, resume_from_checkpoint
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} is not inside a stage folder of "
                f"{self._base_output_dir!r}; pass True to resume from the last complete checkpoint."
            )
        for index in reversed(range(len(self.schedule.stages))):
            if os.path.isfile(os.path.join(self.stage_dir(index), STAGE_COMPLETE)):
                return index + 1, None
            checkpoint = last_complete_checkpoint(self.stage_dir(index))
            if checkpoint is not None:
                return index, checkpoint
        logger.warning(f"No complete checkpoint under {self._base_output_dir}; training from the start.")
        return 0, None

    def _load_weights(self, path: str) -> None:
        """Loads the model weights this trainer saved in `path` (a stage model or a checkpoint: LoRA unmerged)."""
        state_dict = {}
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                state_dict.update(load_file(os.path.join(path, name)))
        if not state_dict:
            raise ValueError(
                f"{path} holds no .safetensors weights (a ZeRO-3 checkpoint saved without "
                "stage3_gather_16bit_weights_on_model_save?); set it to true in the DeepSpeed config to resume from here."
            )
        if is_deepspeed_zero3_enabled() and any(hasattr(p, "ds_id") for p in self.model.parameters()):
            _load_state_dict_into_zero3_model(self.model, state_dict)  # partitioned already (by an earlier engine)
        else:  # not partitioned yet (the engine partitions it at the stage start): every rank loads it whole
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            tied = {k for k in missing if k.endswith("lm_head.weight")}
            if set(missing) - tied or unexpected:
                raise ValueError(f"Weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}.")

    # ------------------------------------------------------------------------------------------------ stages
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Runs every stage of the schedule (from the resume point), then saves the final model (LoRA merged),
        the processor and `training_summary.json` in `output_dir`."""
        if not self.train_components:
            raise ValueError("PartTrainer.train needs train_components: a list of MixtureComponent (one per corpus).")
        self._ensure_lora()
        start_stage, checkpoint = self._resume_point(resume_from_checkpoint)
        self.stage_summaries = [  # of the finished stages
            json.loads(Path(self.stage_dir(index), STAGE_COMPLETE).read_text(encoding="utf-8"))
            for index in range(start_stage)
        ]
        if start_stage > 0 and checkpoint is None:  # resuming into the stage after a finished one
            self._load_weights(os.path.join(self.stage_dir(start_stage - 1), STAGE_MODEL_DIR))
            logger.info(f"Loaded the weights of finished stage {start_stage - 1}.")
        os.makedirs(self._base_output_dir, exist_ok=True)
        self.schedule.save(os.path.join(self._base_output_dir, "schedule.json"))
        output = None
        try:
            for index in range(start_stage, len(self.schedule.stages)):
                output = self._run_stage(index, checkpoint if index == start_stage else None)
        finally:
            self.args = self._run_args
        self._call_stage_callbacks("on_schedule_end", output_dir=self._base_output_dir)
        self.stage_index = None  # outside a stage, `_save` writes the final model (LoRA merged)
        self.args = self._arguments(push_to_hub=False)  # pushing is an explicit push_to_hub()
        try:
            self.save_model(self._base_output_dir)  # the processor too (`_save`)
        finally:
            self.args = self._run_args
        if self.args.should_save:
            self._write_summary()
        return output

    def _run_stage(self, index: int, checkpoint: str | None):
        stage = self.schedule.stages[index]
        started = time.time()
        self.stage_index = index
        stage_dir = self.stage_dir(index)
        if self.args.uses_token_budget and stage.steps is None and stage.fraction is None:
            raise ValueError(
                f"Stage {stage.name!r} is given in epochs, but token-budget batches hold a varying number of samples: "
                "give the stage steps or a fraction of --max_steps."
            )
        args, sizes = self._run_args, [component.size for component in self._stage_components(stage)]
        total_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        steps = stage.num_steps(args.max_steps, None if None in sizes else sum(sizes), total_batch_size)

        # LoRA is on from the first stage that trains it (frozen afterwards); switched first, as peft's switch may
        # touch requires_grad
        if self.model.has_lora:
            self.model.set_lora_enabled(any("llm_lora" in s.trainable for s in self.schedule.stages[: index + 1]))
        counts = set_trainable(self.model, stage.trainable, encoder_last_k=stage.encoder_last_k)  # the freeze plan
        self._pending_unfreeze = dict(stage.unfreeze_at)
        learning_rate, learning_rate_origin = stage.peak_learning_rate(args.learning_rate)
        warmup_steps, warmup_origin = stage.num_warmup_steps(steps, args.warmup_steps)
        self._banner(index, stage, steps, counts,
                     f"lr: {learning_rate:g} ({learning_rate_origin})  warm-up: {warmup_steps} steps ({warmup_origin})")

        self.train_dataset = self._stage_dataset(index, stage)
        # Stage checkpoints are not pushed to the Hub (see `push_to_hub`); on resume the Trainer skips no batches:
        # the mixture restores its own position.
        self.args = self._arguments(
            output_dir=stage_dir, max_steps=steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
            push_to_hub=False, ignore_data_skip=True,
        )
        self._reset_optimization_state()
        if checkpoint is not None:
            self.train_dataset.resume_after_batches(
                _checkpoint_step(checkpoint) * self.args.gradient_accumulation_steps,
                per_device_batch_size=1 if self.args.uses_token_budget else self.args.per_device_train_batch_size,
                world_size=self.args.world_size,
            )
        stage_keywords = {"stage": stage, "stage_index": index, "stage_dir": stage_dir, "trainer": self}
        self._call_stage_callbacks("on_stage_begin", model_wrapped=self.model_wrapped, **stage_keywords)
        try:
            if checkpoint is not None and _checkpoint_step(checkpoint) >= steps:
                output = self._restore_finished_stage(checkpoint)
            else:
                self._hold_later_groups(stage)
                self._refresh_fsdp2_mixed_precision()
                output = super().train(resume_from_checkpoint=checkpoint)
        finally:
            self._release_later_groups()
        self._finish_stage(index, stage, stage_dir, steps, counts, time.time() - started)
        self._call_stage_callbacks("on_stage_end", model_wrapped=self.model_wrapped, **stage_keywords)
        return output

    def _arguments(self, **changes: Any) -> PartTrainingArguments:
        """A shallow copy of the run's arguments with `changes`: new `TrainingArguments` (`dataclasses.replace`)
        would reset accelerate's state under the live accelerator (tests/test_trainer_internals.py)."""
        arguments = copy.copy(self._run_args)
        for name, value in changes.items():
            setattr(arguments, name, value)
        return arguments

    def _restore_finished_stage(self, checkpoint: str):
        """A crash after a stage's last checkpoint but before its completion: restore, do not train on. With
        `load_best_model_at_end` the stage ends on its best checkpoint, as the Trainer's loop would have."""
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best is not None and os.path.isdir(best):
            checkpoint = best
        self._load_weights(checkpoint)
        logger.warning(f"The stage's last step is checkpointed; finishing the stage from {checkpoint}.")
        return None

    def _reset_optimization_state(self) -> None:
        """A new trainable set needs a new optimizer, scheduler and model wrapper: DistributedDataParallel's reducer
        all-reduces only the parameters that required grad when it was built, and DeepSpeed builds its engine (and
        ZeRO optimizer) for a fixed trainable set. Given a wrapper, `Trainer._wrap_model` and `accelerator.prepare`
        keep it, so the last stage's DistributedDataParallel is dropped (one process: nothing wraps the model)."""
        self.optimizer = self.lr_scheduler = None  # `create_optimizer` and `create_scheduler` build them when None
        self.control = TrainerControl()  # the last stage's should_training_stop must not end this one
        if self.is_deepspeed_enabled:
            self._reset_deepspeed_state()
        elif self.model_wrapped is not self.model:
            # accelerate's mixed precision replaced the model's forward by an autocast wrapper, keeping the original
            # as `_original_forward`; preparing the model again would wrap the wrapper: put the original back first.
            # (`accelerator.unwrap_model(..., keep_fp32_wrapper=False)` also strips the model's forward decorators.)
            original_forward = self.model.__dict__.pop("_original_forward", None)
            if original_forward is not None:
                self.model.forward = original_forward
            self.model_wrapped = self.model

    def _uses_ddp(self) -> bool:
        """Whether the Trainer wraps the model in DistributedDataParallel (several processes, no DeepSpeed/FSDP)."""
        return self.accelerator.num_processes > 1 and not self.is_deepspeed_enabled and not self.is_fsdp_enabled

    def _hold_later_groups(self, stage: Stage) -> None:
        """Progressive unfreezing inside a stage (`Stage.unfreeze_at`): the optimizer and, under DDP, the reducer
        must hold the later groups from the stage's start (neither can be extended mid-stage), so they require grad
        while both are built; the first training step freezes them again until their step."""
        if not stage.later_groups:
            return
        if self.is_deepspeed_enabled:
            raise ValueError(
                f"Stage {stage.name!r}: unfreeze_at is not supported with DeepSpeed (its engine is built for a fixed "
                "trainable set); split the stage into two stages."
            )
        if self._uses_ddp():
            handler = self.accelerator.ddp_handler
            if handler is None or not handler.find_unused_parameters or handler.static_graph:
                raise ValueError(
                    f"Stage {stage.name!r} unfreezes {stage.later_groups} inside the stage (unfreeze_at), which under "
                    "DistributedDataParallel needs find_unused_parameters=True and no static graph: those groups have "
                    "no gradient until their step. Leave --ddp_find_unused_parameters unset (or True), gradient "
                    "checkpointing off and --ddp_static_graph unset, or split the stage into two stages."
                )
        groups = parameter_groups(self.model, stage.encoder_last_k)
        self._waiting_parameters = [p for g in stage.later_groups for p in groups[g].values() if not p.requires_grad]
        for parameter in self._waiting_parameters:
            parameter.requires_grad_(True)

    def _release_later_groups(self) -> None:
        """Freezes the parameters `_hold_later_groups` made trainable (once the optimizer and wrapper are built)."""
        for parameter in self._waiting_parameters:
            parameter.requires_grad_(False)
        self._waiting_parameters = []

    def _reset_deepspeed_state(self) -> None:
        """An accelerator prepares one DeepSpeed model only: each stage gets a new engine, accelerator and DeepSpeed
        config ("auto" values from this stage's learning rate, warm-up and length). Destroying the last engine removes
        its ZeRO-3 hooks; the parameters stay partitioned and the next engine reuses the partitions."""
        from accelerate.state import AcceleratorState
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        self.accelerator.free_memory()  # destroys the engine
        self.model_wrapped = self.model
        self.deepspeed = None
        if self.args.deepspeed:  # a fresh config from the file/dict, "auto" values unfilled
            self.args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(self.args.deepspeed)
            self.args.hf_deepspeed_config.trainer_config_process(self.args)
            self.args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=self.args.hf_deepspeed_config)
        else:  # `accelerate launch --use_deepspeed`: the plugin comes from the launcher's environment
            self.args.deepspeed_plugin = DeepSpeedPlugin()
            self.args.deepspeed_plugin.set_mixed_precision(self.args.mixed_precision)
            self.args.deepspeed_plugin.set_deepspeed_weakref()
        AcceleratorState._reset_state()  # keeps the process group (PartialState)
        self.create_accelerator_and_postprocess()

    def _banner(self, index: int, stage: Stage, steps: int, counts: dict[str, int], extra: str) -> None:
        trainable, total = counts["trainable"], counts["total"]
        lines = [
            f"==== PART stage {index + 1}/{len(self.schedule.stages)}: {stage.name} ({self.schedule.name}) ====",
            f"  trainable: {', '.join(stage.trainable)}"
            + (f" (+ {', '.join(stage.later_groups)} later)" if stage.later_groups else ""),
            f"  parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
            f"  tasks: {stage.tasks}  steps: {steps}",
            f"  {extra}",
        ]
        if self.args.should_log:
            for line in lines:
                logger.warning(line)

    def _call_stage_callbacks(self, event: str, **kwargs: Any) -> None:
        """Calls `event` of every `PartStageCallback` with the callback arguments, `model` and `kwargs`."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PartStageCallback):
                getattr(callback, event)(self.args, self.state, self.control, model=self.model, **kwargs)

    def _finish_stage(self, index, stage, stage_dir, steps, counts, seconds) -> None:
        self.save_model(os.path.join(stage_dir, STAGE_MODEL_DIR))
        losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
        summary = {
            "stage": index,
            "name": stage.name,
            "trainable_groups": stage.trainable,
            "tasks": stage.tasks,
            "steps": steps,
            "learning_rate": self.args.learning_rate,
            "warmup_steps": self.args.warmup_steps,
            "global_step": self.state.global_step,
            "best_model_checkpoint": self.state.best_model_checkpoint,
            "best_metric": self.state.best_metric,
            "trainable_parameters": counts["trainable"],
            "total_parameters": counts["total"],
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "log_history": self.state.log_history,
            "seconds": seconds,
            "skipped_samples": dict(self.train_dataset.skipped),
        }
        self.stage_summaries.append(summary)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_json(os.path.join(stage_dir, STAGE_COMPLETE), summary)

    def _write_summary(self) -> None:
        summary = {
            "schedule": self.schedule.to_dict(),
            "stages": [{k: v for k, v in s.items() if k != "log_history"} for s in self.stage_summaries],
            "losses": {s["name"]: [e for e in s["log_history"] if "loss" in e] for s in self.stage_summaries},
            "total_seconds": sum(s["seconds"] for s in self.stage_summaries),
        }
        write_json(os.path.join(self._base_output_dir, SUMMARY_NAME), summary)

    # -------------------------------------------------------------------------------------------- evaluation
    def evaluate_generation(
        self,
        samples=None,
        metric_key_prefix: str = "test",
        batch_size: int | None = None,
        hypothesis_cap: HypothesisCap | Mapping[str, Any] | bool | None = None,
        **generate_kwargs,
    ) -> tuple[dict[str, float], list[str]]:
        """Generates for `samples` (default: `eval_dataset`) and scores WER/CER per language (uncapped) and BLEU per
        direction; logs the metrics and returns `(metrics, predictions)`. Runs on every rank under DeepSpeed.
        `hypothesis_cap` (opt-in) adds capped rates under their own keys (`<prefix>_wer_capped_<lang>`, ...)."""
        samples = samples if samples is not None else self.eval_dataset
        if samples is None:
            raise ValueError("evaluate_generation needs samples= or an eval_dataset.")
        metrics, predictions = evaluate_speech_to_text(
            self.model,
            self.processor,
            samples,
            batch_size=batch_size or self.args.per_device_eval_batch_size,
            metric_key_prefix=metric_key_prefix,
            progress=not self.args.disable_tqdm,
            hypothesis_cap=hypothesis_cap,
            **generate_kwargs,
        )
        self.log(dict(metrics))  # Trainer.log adds the epoch to the dict it is given
        return metrics, predictions

    # -------------------------------------------------------------------------------------------- train step
    def training_step(self, model, inputs, num_items_in_batch=None):
        self._release_later_groups()  # the optimizer (and DDP reducer) hold them now; they wait for their step
        step_in_stage = self.state.global_step
        due = sorted(step for step in self._pending_unfreeze if step <= step_in_stage)  # <: resumed past the step
        if due:
            groups = sorted({g for step in due for g in self._pending_unfreeze.pop(step)})
            stage = self.schedule.stages[self.stage_index]
            available = parameter_groups(self.model, stage.encoder_last_k)
            for group in groups:
                for p in available[group].values():
                    p.requires_grad_(True)
            logger.warning(f"  step {step_in_stage}: unfreezing {groups} inside stage {stage.name}")
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:  # after training_step's model.train(): frozen modules stay in eval mode (no dropout drift)
            frozen_modules_to_eval(self.model)
        return super().compute_loss(model, inputs, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Checkpoints keep LoRA unmerged (to resume); the final model folds it in."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        mode = "merged" if self.stage_index is None else "unmerged"
        if self.is_deepspeed_enabled and state_dict is not None and not state_dict:
            # ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the Trainer writes config files here and
            # the weights as a DeepSpeed checkpoint (zero_to_fp32.py), which hold LoRA unmerged: so must the config.
            mode = "unmerged"
        self.accelerator.unwrap_model(self.model).save_pretrained(
            output_dir, state_dict=state_dict, lora_save_mode=mode, is_main_process=True
        )
        self.processor.save_pretrained(output_dir)
        arguments = self._run_args if self.stage_index is None else self.args  # the final model: the user's
        torch.save(arguments, os.path.join(output_dir, "training_args.bin"))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision=None, private=None, **kwargs):
        """Publishes the final model folder (weights, remote code, processor, model card) in one commit with
        `model_cards.publish`; stage folders and checkpoints are never uploaded. Write the card first
        (`model_cards.write_model_card`)."""
        from model_cards import publish

        if not self.args.should_save:
            return None
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self._base_output_dir))
        return publish(
            self._base_output_dir,
            repo_id,
            private=bool(private if private is not None else self.args.hub_private_repo),
            token=token or self.args.hub_token,
            commit_message=commit_message or "End of training",
            revision=revision or self.args.hub_revision,
        )

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written to a staging folder and renamed into place once complete, so a kill
        during a save never leaves a `checkpoint-N` that looks complete but is not."""
        run_dir = self.args.output_dir  # the stage folder (PartTrainer.train runs no hyperparameter-search trials)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, _STAGING_DIR)
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = run_dir
        # The Trainer recorded a new best checkpoint under the staging folder: record where it will live, also in
        # the checkpoint's own state (read on resume), before the rename makes the checkpoint visible.
        best = self.state.best_model_checkpoint
        if best is not None and os.path.dirname(os.path.abspath(best)) == os.path.abspath(staging_root):
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging_root, name, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging_root, name), final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
        self.accelerator.wait_for_everyone()


def _collate_one_batch(collator, items: list[list[Mapping[str, Any]]]) -> Any:
    """Collates the one token-budget batch (a list of samples) that a `batch_size=1` DataLoader hands over."""
    (batch,) = items
    return collator(batch)


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-N` in `folder` with its `trainer_state.json` (staging leftovers are ignored)."""
    complete = [c for c in sort_checkpoints(folder) if os.path.isfile(os.path.join(c, TRAINER_STATE_NAME))]
    return complete[-1] if complete else None


def _checkpoint_step(checkpoint: str) -> int:
    return TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).global_step


__all__ = ["PartTrainer", "PartTrainingArguments", "last_complete_checkpoint"]
