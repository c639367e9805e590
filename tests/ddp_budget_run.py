"""Trains a tiny PART model with token-budget batches on two CPU ranks (gloo, plain DistributedDataParallel,
gradient accumulation 2), for `tests/test_token_budget.py`.

Launch: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_budget_run.py OUTPUT_DIR

Writes `budget_rank<r>.json` per rank: the optimizer steps run, the size of every batch the rank trained on, and a
SHA-256 of every parameter at the end.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch.distributed as dist  # noqa: E402

from ddp_run import parameter_hashes  # noqa: E402
from part_fixtures import report_gloo_threads, tiny_trainer  # noqa: E402
from trainers.teardown import end_distributed  # noqa: E402
from trainers import Schedule, Stage  # noqa: E402

SCHEDULE = Schedule("budget", [Stage("all_tasks", ["adapter", "llm"], {"asr": 1.0, "s2tt": 1.0, "mt": 1.0}, steps=5)])


def main():
    output_dir = sys.argv[1]
    trainer = tiny_trainer(
        output_dir, schedule=SCHEDULE, max_steps=5, save_steps=100, ddp_backend="gloo", gradient_accumulation_steps=2,
        max_tokens_per_batch=70, batch_buffer_size=16,
    )
    sizes = []
    original_compute_loss = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        sizes.append(int(inputs["input_ids"].shape[0]))
        return original_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    rank = dist.get_rank()
    record = {"rank": rank, "world_size": dist.get_world_size(), "steps": trainer.state.global_step,
              "batch_sizes": sizes, "end": parameter_hashes(trainer.model)}
    with open(os.path.join(output_dir, f"budget_rank{rank}.json"), "w") as f:
        json.dump(record, f)
    end_distributed(trainer)


if __name__ == "__main__":
    main()
    report_gloo_threads()  # the run's objects are gone: no gloo thread may be left
