"""ZeRO-3 on CPU with 2 ranks (gloo): parameter bytes held per rank vs the total, and step time vs one process.

Run without a launcher, it launches itself: `python -m torch.distributed.run --standalone --nproc_per_node 2
benchmarks/bench_zero3.py ...`, and prints the combined result. Each rank builds the same PART model (the suite's
dimensions), wraps it with `deepspeed.initialize` and the repository's `examples/configs/ds_zero3.json` (its
"auto" values filled by the Trainer's own `HfTrainerDeepSpeedConfig` from `TrainingArguments`: fp32, micro batch =
global batch / ranks, buckets from the LLM width), with a torch AdamW optimizer.

Step = forward + backward + optimizer step, global batch 8 (4 clips per rank, 1 thread per rank). The one-process
reference (rank 0: a plain PyTorch copy of the same model, the whole batch of 8, AdamW, 2 threads) runs in the same
launch, interleaved with the ZeRO-3 steps (Z S Z S ...), while rank 1 waits in a barrier.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("DS_ACCELERATOR", "cpu")

DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "examples", "configs", "ds_zero3.json")


def launch(args) -> None:
    from common import emit_result, log

    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
                   os.path.abspath(__file__), "--worker", "--output-dir", output_dir, "--config", args.config,
                   "--dims", args.dims, "--repeats", str(args.repeats)]
        log(f"zero3: launching {args.ranks} ranks (torch.distributed.run, gloo)")
        completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                   timeout=args.timeout)
        if completed.returncode != 0:
            emit_result({"error": f"torch.distributed.run exited with {completed.returncode}",
                         "log_tail": (completed.stdout[-3000:] + "\n" + completed.stderr[-6000:]).strip()})
            return
        ranks = []
        for rank in range(args.ranks):
            with open(os.path.join(output_dir, f"rank{rank}.json")) as f:
                ranks.append(json.load(f))
    # per-rank lists; the step times and losses are rank 0's (its ZeRO-3 times are already the max over ranks)
    emit_result({"world_size": args.ranks, "config": ranks[0]["config"], "times": ranks[0]["times"],
                 "losses": ranks[0]["losses"], "single_optimizer_state_bytes": ranks[0]["single_optimizer_state_bytes"],
                 **{key: [r[key] for r in ranks] for key in ("parameter_bytes_total", "parameter_bytes_partition",
                                                             "parameter_bytes_persistent", "optimizer_state_bytes",
                                                             "rss_peak")}})


def _state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if hasattr(t, "numel"))


def worker(args) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import TrainingArguments
    from transformers.integrations import HfTrainerDeepSpeedConfig

    from common import Dims, batches, build_part, build_processors, build_tokenizer, log, process_peak_bytes
    from trainers.teardown import end_distributed

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    model = build_part(dims, tokenizer).train()
    full_batch, _ = batches(dims, *build_processors(model.config, tokenizer), tokenizer)
    per_rank = dims.batch_size // world_size
    rank_batch = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in full_batch.items()}
    single = build_part(dims, tokenizer).train() if rank == 0 else None  # the one-process reference, same seed
    single_optimizer = torch.optim.AdamW(single.parameters(), lr=1e-5) if single is not None else None

    # the config's "auto" entries filled by the Trainer's own code, from the Trainer's arguments for this batch
    training_args = TrainingArguments(output_dir=args.output_dir, per_device_train_batch_size=per_rank,
                                      max_grad_norm=1.0, use_cpu=True, report_to=[])
    ds_config = HfTrainerDeepSpeedConfig(args.config)
    ds_config.trainer_config_process(training_args)
    ds_config.trainer_config_finalize(training_args, model, num_training_steps=args.repeats + 1)
    config = {**ds_config.config, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
                                      config=config)
    if rank == 0:
        log("zero3: engine ready")

    def zero_step() -> tuple[float, float]:
        torch.set_num_threads(1)
        dist.barrier()
        start = time.perf_counter()
        loss = engine(**rank_batch).loss
        engine.backward(loss)
        engine.step()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed), loss.detach().item()

    def single_step() -> tuple[float, float]:
        result = (0.0, 0.0)
        if rank == 0:  # rank 0 alone, with both cores; rank 1 waits in the barrier below
            torch.set_num_threads(world_size)
            start = time.perf_counter()
            single_optimizer.zero_grad(set_to_none=True)
            loss = single(**full_batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(single.parameters(), 1.0)
            single_optimizer.step()
            result = (time.perf_counter() - start, loss.detach().item())
            torch.set_num_threads(1)
        dist.barrier()
        return result

    steps = {"zero3": zero_step, "single": single_step}
    times, losses = {name: [] for name in steps}, {name: [] for name in steps}
    zero_step()  # warm-up (also creates the optimizer states)
    single_step()
    for repeat in range(args.repeats):
        for name in list(steps) if repeat % 2 == 0 else list(steps)[::-1]:
            elapsed, loss = steps[name]()
            times[name].append(elapsed)
            losses[name].append(loss)
        if rank == 0:
            log(f"  zero3 round {repeat + 1}/{args.repeats}: ZeRO-3 {times['zero3'][-1]:.2f}s, "
                f"one process {times['single'][-1]:.2f}s")

    # Parameter bytes this rank holds outside forward/backward: its ZeRO-3 partitions, plus parameters kept whole
    # (persistent: smaller than stage3_param_persistence_threshold) that are materialised on every rank.
    parameters = list(engine.module.parameters())
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
    record = {
        "config": config,
        "parameter_bytes_total": sum(p.ds_numel * p.element_size() for p in parameters),
        "parameter_bytes_partition": sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in parameters),
        "parameter_bytes_persistent": sum(p.data.numel() * p.element_size() for p in parameters),
        "optimizer_state_bytes": _state_bytes(getattr(engine.optimizer, "optimizer", engine.optimizer))
        + sum(f.numel() * f.element_size() for f in flat),
        "single_optimizer_state_bytes": _state_bytes(single_optimizer) if single_optimizer is not None else 0,
        "times": times,
        "losses": losses,
        "rss_peak": process_peak_bytes(),
    }
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    del engine, steps, zero_step  # the engine holds the process group; then it goes while Python runs
    end_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--dims", default="{}")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    worker(args) if args.worker else launch(args)


if __name__ == "__main__":
    main()
