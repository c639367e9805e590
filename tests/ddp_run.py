"""Trains every PART preset, one schedule with progressive unfreezing inside a stage, and `baseline_2stage` again in
bf16 mixed precision, on a tiny model under plain DistributedDataParallel (CPU, gloo, no DeepSpeed), for
`tests/test_ddp.py`.

Launch: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_run.py OUTPUT_DIR

Writes, in OUTPUT_DIR, `ddp_rank<r>.json` per rank: for every schedule and stage, a SHA-256 of every parameter at the
stage's start and end, the names of the parameters that trained (required grad at the end), the model wrapper at the
stage end (its type, how many DistributedDataParallel wrappers are alive, how many wrappers deep the model's forward
is), and the batches the rank saw (and how
many were text-only).
"""

import gc
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from part_fixtures import count_batches, report_gloo_threads, tiny_trainer  # noqa: E402
from trainers.teardown import end_distributed  # noqa: E402
from trainers import PRESETS, Schedule, Stage  # noqa: E402
from trainers.callbacks import PartStageCallback  # noqa: E402

MAX_STEPS = 8  # every preset stage gets 2-5 steps
UNFREEZE_SCHEDULE = Schedule(
    "unfreeze_inside",
    [Stage("adapter_then_encoder", ["adapter"], {"asr": 1.0, "s2tt": 1.0}, steps=4, unfreeze_at={2: ["encoder"]})],
)


def parameter_hashes(model) -> dict[str, str]:
    return {
        name: hashlib.sha256(p.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, p in model.named_parameters()
    }


def wrapper_depth(function) -> int:
    depth = 0
    while hasattr(function, "__wrapped__"):
        function, depth = function.__wrapped__, depth + 1
    return depth


class HashStages(PartStageCallback):
    """Per stage: every parameter's hash at the start and the end, which parameters train, the model wrapper."""

    def __init__(self):
        self.stages = {}

    def on_stage_begin(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        self.stages[stage.name] = {"start": parameter_hashes(model)}

    def on_stage_end(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        record = self.stages[stage.name]
        record["end"] = parameter_hashes(model)
        record["trained"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        record["wrapper"] = type(kwargs["model_wrapped"]).__name__
        gc.collect()  # earlier stages' wrappers must be gone (their reducers hook the parameters they cover)
        record["live_ddp_wrappers"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        record["forward_wrappers"] = wrapper_depth(model.forward)  # mixed precision wraps it once, not per stage


def run(output_dir: str, schedule, **arg_overrides) -> dict:
    recorder = HashStages()
    # mt_weight=2: text-only batches in the LoRA stages, so a rank may have one while the other has audio.
    trainer = tiny_trainer(
        output_dir, schedule=schedule, max_steps=MAX_STEPS, callbacks=[recorder], save_steps=100, mt_weight=2.0,
        ddp_backend="gloo", **arg_overrides,
    )
    batches = count_batches(trainer)
    trainer.train()
    return {"stages": recorder.stages, "batches": batches, "schedule": trainer.schedule.to_dict()}


def main():
    output_dir = sys.argv[1]
    results = {}
    for schedule in [*PRESETS, UNFREEZE_SCHEDULE]:
        name = schedule if isinstance(schedule, str) else schedule.name
        results[name] = run(os.path.join(output_dir, name), schedule)
    results["baseline_2stage_bf16"] = run(os.path.join(output_dir, "bf16"), "baseline_2stage", bf16=True)
    rank = dist.get_rank()
    with open(os.path.join(output_dir, f"ddp_rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": dist.get_world_size(), "schedules": results}, f)
    end_distributed()


if __name__ == "__main__":
    main()
    report_gloo_threads()  # the run's objects are gone: no gloo thread may be left
