"""Trains the `part` preset on a tiny model under FSDP2 on CPU ranks with gloo, for `tests/test_fsdp2.py`: the
Trainer's `fsdp` + `fsdp_config` from `examples/configs/fsdp2.json` (version 2: accelerate's `fully_shard` path).
`--ddp` trains the same run under plain DistributedDataParallel (the unsharded reference: same seeds, same per-rank
batches), after checking that `--fsdp` without the switch below is refused on CPU ranks. The FSDP2 run first
checks that a sharded state dict type (no model weights in the Trainer's `save_model`) is refused, and afterwards
trains a two-stage schedule in bf16 mixed precision (the encoder unfrozen inside stage 2).

Launch: python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_run.py OUTPUT_DIR [--ddp] [--resume]
(--resume: continue the run in OUTPUT_DIR from its last complete checkpoint.)

accelerate 1.15 turns FSDP on for accelerator devices only (`AcceleratorState` switches to `DistributedType.FSDP`
for MULTI_GPU, MULTI_NPU, ... but not MULTI_CPU), while torch's `fully_shard` runs on CPU with gloo.
`accelerate_fsdp_on_cpu()` makes accelerate take its FSDP path on the CPU ranks; everything after that (the
Trainer's FSDP branches, accelerate's `fsdp2_prepare_model`, `fully_shard`, the full state dict for saving, the FSDP
checkpoint for resuming) is the libraries' own code, as on GPUs.

Writes, in OUTPUT_DIR, `fsdp2_rank<r>.json` per rank: for every stage, a SHA-256 of every (gathered, full) parameter
at the stage's start and end, the parameters that trained, whether LoRA was switched on, this rank's share of the
parameter elements at the stage end and the FSDP units (the wrap plan); the batches the rank saw (text-only ones); the same for the bf16 run, with the parameters' dtypes after it.
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from part_fixtures import count_batches, report_gloo_threads, tiny_trainer  # noqa: E402
from trainers.teardown import end_distributed  # noqa: E402
from trainers import Schedule, Stage  # noqa: E402
from trainers.callbacks import PartStageCallback  # noqa: E402

MAX_STEPS = 8  # the part preset: 2 + 2 + 2 + 3 steps
BF16_SCHEDULE = Schedule("adapter_then_encoder", [  # the encoder: frozen at its first forward, trained in stage 2
    Stage("1_adapter", ["adapter"], {"asr": 1.0, "s2tt": 1.0}, steps=2),
    Stage("2_adapter_then_encoder", ["adapter"], {"asr": 1.0, "s2tt": 1.0}, steps=3, unfreeze_at={1: ["encoder"]}),
])
FSDP_CONFIG = os.path.join(os.path.dirname(HERE), "examples", "configs", "fsdp2.json")  # the examples' config


def accelerate_fsdp_on_cpu() -> None:
    """Lets accelerate enable its FSDP plugin on CPU ranks (see the module docstring): after `AcceleratorState`
    is set up with an FSDP plugin on MULTI_CPU, it is switched to FSDP as accelerate does on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def full_parameters(model) -> dict[str, torch.Tensor]:
    """Every parameter in full: FSDP2's sharded DTensors are all-gathered (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return {n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in model.named_parameters()}


def parameter_hashes(model) -> dict[str, str]:
    return {
        name: hashlib.sha256(p.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, p in full_parameters(model).items()
    }


def local_share(model) -> dict[str, int]:
    """Elements this rank holds (its shards) and in all, and how many parameters are sharded DTensors."""
    from torch.distributed.tensor import DTensor

    local = total = sharded = 0
    for p in model.parameters():
        total += p.numel()
        if isinstance(p, DTensor):
            sharded += 1
            local += p.to_local().numel()
        else:
            local += p.numel()
    return {"local": local, "total": total, "sharded_parameters": sharded,
            "parameters": sum(1 for _ in model.parameters())}


def fsdp_units(model) -> dict[str, str]:
    """The wrap plan: module name -> class of every module `fully_shard` made an FSDP unit."""
    from torch.distributed.fsdp import FSDPModule

    return {name or "<root>": type(m).__name__.removeprefix("FSDP")
            for name, m in model.named_modules() if isinstance(m, FSDPModule)}


def lora_switched_on(model) -> bool:
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and not any(layer.disable_adapters for layer in layers)


class Recorder(PartStageCallback):
    def __init__(self):
        self.stages = {}

    def on_stage_begin(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        self.stages[stage.name] = {"start": parameter_hashes(model), "lora_on": lora_switched_on(model)}

    def on_stage_end(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        record = self.stages[stage.name]
        record["end"] = parameter_hashes(model)
        record["trained"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        record["share"] = local_share(model)
        record["wrapper"] = type(kwargs["model_wrapped"]).__name__


def refused(output_dir: str, **arguments) -> str | None:
    """The error PartTrainer raises for these Trainer arguments (None: accepted)."""
    try:
        tiny_trainer(os.path.join(output_dir, "refused"), ddp_backend="gloo", **arguments)
    except ValueError as error:
        return str(error)
    return None


def train(output_dir: str, schedule: str | Schedule, max_steps: int, resume: bool = False, **arguments) -> dict:
    """Trains `schedule`; returns the per-stage records, the batches this rank saw and the trained model."""
    recorder = Recorder()
    trainer = tiny_trainer(output_dir, schedule=schedule, max_steps=max_steps, callbacks=[recorder], ddp_backend="gloo",
                           **arguments)
    assert trainer.is_fsdp_enabled == bool(arguments.get("fsdp"))
    batches = count_batches(trainer)
    trainer.train(resume_from_checkpoint=True if resume else None)
    return {"stages": recorder.stages, "batches": batches, "schedule": trainer.schedule.to_dict(),
            "model": trainer.model}


def main():
    from accelerate.state import AcceleratorState

    output_dir = sys.argv[1]
    ddp, resume = "--ddp" in sys.argv[2:], "--resume" in sys.argv[2:]
    sharding = {} if ddp else {"fsdp": True, "fsdp_config": FSDP_CONFIG}
    refusals = {}
    if ddp:  # --fsdp as a user would pass it on CPU ranks: accelerate leaves FSDP off, PartTrainer refuses
        refusals["cpu"] = refused(output_dir, fsdp=True, fsdp_config=FSDP_CONFIG)
    else:
        accelerate_fsdp_on_cpu()
        if not resume:  # a sharded state dict type would leave the stages and the run without model weights
            # (FSDP1, also refused, cannot be tried here: accelerate's FSDP1 plugin needs an accelerator device)
            with open(FSDP_CONFIG, encoding="utf-8") as f:
                sharded_saves = {**json.load(f), "state_dict_type": "SHARDED_STATE_DICT"}
            refusals["sharded"] = refused(output_dir, fsdp=True, fsdp_config=sharded_saves)
            AcceleratorState._reset_state()  # the next Trainer's accelerator takes its own FSDP plugin
    # mt_weight=2: text-only batches in the last stage, so a rank may have one while the other has audio.
    run = train(output_dir, "part", MAX_STEPS, resume=resume, save_steps=2, mt_weight=2.0, **sharding)
    result = {
        "rank": dist.get_rank(), "world_size": dist.get_world_size(), "resumed": resume, "refused": refusals,
        "units": {} if ddp else fsdp_units(run.pop("model")), **run,
    }
    if not ddp and not resume:
        # bf16 mixed precision: the encoder layers, frozen at their first forward (adapter stage), train from the
        # second step of stage 2 on (progressive unfreezing inside a stage)
        AcceleratorState._reset_state()
        bf16 = train(os.path.join(output_dir, "bf16"), BF16_SCHEDULE, 5, save_steps=100, bf16=True, **sharding)
        bf16["dtypes"] = sorted({str(p.dtype) for p in bf16.pop("model").parameters()})
        result["bf16"] = bf16
    result.pop("model", None)
    with open(os.path.join(output_dir, f"fsdp2_rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    end_distributed()


if __name__ == "__main__":
    main()
    report_gloo_threads()  # the run's objects are gone: no gloo thread may be left
