"""ZeRO-3 on CPU with 2 ranks (gloo): parameter bytes held per rank vs the total, and step time vs one process.

Run without a launcher, it launches itself: `python -m torch.distributed.run --standalone --nproc_per_node 2
benchmarks/bench_zero3.py ...`, and prints the combined result. Each rank builds the same PART model (the suite's
dimensions), wraps it with `deepspeed.initialize` and the repository's `examples/configs/ds_zero3.json` (its
"auto" values filled as the Trainer fills them: fp32, micro batch = global batch / ranks, buckets from the LLM
width), with a torch AdamW optimizer.

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


def fill_auto(config: dict, *, hidden_size: int, micro_batch: int, world_size: int) -> dict:
    """The Trainer's values for the config's "auto" entries (fp32, no accumulation, clipping at 1.0)."""
    config = json.loads(json.dumps(config))
    for precision in ("bf16", "fp16"):
        if isinstance(config.get(precision), dict) and config[precision].get("enabled") == "auto":
            config[precision]["enabled"] = False
    zero = config.setdefault("zero_optimization", {})
    automatic = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in automatic.items():
        if zero.get(key) == "auto":
            zero[key] = value
    top = {
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "train_micro_batch_size_per_gpu": micro_batch,
        "train_batch_size": micro_batch * world_size,
    }
    for key, value in top.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config["zero_allow_untested_optimizer"] = True
    leftover = [k for k, v in _walk(config) if v == "auto"]
    if leftover:
        raise ValueError(f"unfilled 'auto' entries in the DeepSpeed config: {leftover}")
    return config


def _walk(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def launch(args) -> None:
    from common import emit_result, log

    with tempfile.TemporaryDirectory() as output_dir:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
            os.path.abspath(__file__), "--worker", "--output-dir", output_dir, "--config", args.config,
            "--dims", args.dims, "--repeats", str(args.repeats),
        ]
        log(f"zero3: launching {args.ranks} ranks (torch.distributed.run, gloo)")
        environment = dict(os.environ, OMP_NUM_THREADS="1")
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=environment, timeout=args.timeout)
        if completed.returncode != 0:
            tail = (completed.stdout[-3000:] + "\n" + completed.stderr[-6000:]).strip()
            emit_result({"error": f"torch.distributed.run exited with {completed.returncode}", "log_tail": tail})
            return
        ranks = []
        for rank in range(args.ranks):
            with open(os.path.join(output_dir, f"rank{rank}.json")) as f:
                ranks.append(json.load(f))
    emit_result(_combine(ranks))


def _combine(ranks: list[dict]) -> dict:
    from common import paired_ratios, summary

    total = ranks[0]["parameter_bytes_total"]
    held = [r["parameter_bytes_held"] for r in ranks]
    zero = ranks[0]["zero3_step_s"]  # already the max over ranks per step
    single = ranks[0]["single_step_s"]
    return {
        "world_size": len(ranks),
        "config": ranks[0]["config"],
        "parameter_bytes_total": total,
        "parameter_bytes_held_per_rank": held,
        "parameter_bytes_partition_per_rank": [r["parameter_bytes_partition"] for r in ranks],
        "parameter_bytes_persistent_per_rank": [r["parameter_bytes_persistent"] for r in ranks],
        "held_fraction_per_rank": [h / total for h in held],
        "held_fraction_max": max(held) / total,
        "held_vs_ideal": max(held) / (total / len(ranks)),
        "optimizer_state_bytes_per_rank": [r["optimizer_state_bytes"] for r in ranks],
        "single_optimizer_state_bytes": ranks[0]["single_optimizer_state_bytes"],
        "zero3_step_s": summary(zero),
        "single_step_s": summary(single),
        "step_time_ratio": paired_ratios(zero, single),
        "losses": {"zero3": ranks[0]["zero3_losses"], "single": ranks[0]["single_losses"]},
        "rss_peak_per_rank": [r["rss_peak"] for r in ranks],
    }


def worker(args) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from common import (
        Dims, build_part, build_processors, build_tokenizer, clips, log, process_peak_bytes, training_batches,
    )

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dims = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    with open(args.config) as f:
        config = fill_auto(json.load(f), hidden_size=dims.llm_width, micro_batch=dims.batch_size // world_size,
                           world_size=world_size)

    audio = clips(dims)
    model = build_part(dims, tokenizer).train()
    part_processor, peer_processor = build_processors(model.config, tokenizer)
    full_batch, _ = training_batches(dims, part_processor, peer_processor, tokenizer, audio)
    per_rank = dims.batch_size // world_size
    shard = slice(rank * per_rank, (rank + 1) * per_rank)
    rank_batch = {k: v[shard] for k, v in full_batch.items()}

    single = single_optimizer = None
    if rank == 0:  # the one-process reference, built from the same seed
        single = build_part(dims, tokenizer).train()
        single_optimizer = torch.optim.AdamW(single.parameters(), lr=1e-5)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
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
        # rank 0 alone, with both cores; rank 1 waits in the barrier below
        if rank == 0:
            torch.set_num_threads(world_size)
            start = time.perf_counter()
            single_optimizer.zero_grad(set_to_none=True)
            loss = single(**full_batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(single.parameters(), 1.0)
            single_optimizer.step()
            result = (time.perf_counter() - start, loss.detach().item())
            torch.set_num_threads(1)
        else:
            result = (0.0, 0.0)
        dist.barrier()
        return result

    zero_times, single_times, zero_losses, single_losses = [], [], [], []
    zero_step()  # warm-up (also creates the optimizer states)
    single_step()
    for repeat in range(args.repeats):
        order = (zero_step, single_step) if repeat % 2 == 0 else (single_step, zero_step)
        for step in order:
            elapsed, loss = step()
            (zero_times if step is zero_step else single_times).append(elapsed)
            (zero_losses if step is zero_step else single_losses).append(loss)
        if rank == 0:
            log(f"  zero3 round {repeat + 1}/{args.repeats}: ZeRO-3 {zero_times[-1]:.2f}s, "
                f"one process {single_times[-1]:.2f}s")

    # Parameter bytes this rank holds outside forward/backward: its ZeRO-3 partitions, plus parameters kept whole
    # (persistent: smaller than stage3_param_persistence_threshold) that are materialised on every rank.
    partition = persistent = total = 0
    for parameter in engine.module.parameters():
        size = parameter.element_size()
        partition += parameter.ds_tensor.numel() * parameter.ds_tensor.element_size()
        total += parameter.ds_numel * size
        if parameter.data.numel() > 0:
            persistent += parameter.data.numel() * size
    optimizer_state = 0
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        optimizer_state += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    for flat in getattr(engine.optimizer, "fp32_partitioned_groups_flat", []):
        optimizer_state += flat.numel() * flat.element_size()
    single_state = 0
    if single_optimizer is not None:
        for state in single_optimizer.state.values():
            single_state += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    record = {
        "rank": rank,
        "config": config,
        "parameter_bytes_total": total,
        "parameter_bytes_partition": partition,
        "parameter_bytes_persistent": persistent,
        "parameter_bytes_held": partition + persistent,
        "optimizer_state_bytes": optimizer_state,
        "single_optimizer_state_bytes": single_state,
        "zero3_step_s": zero_times,
        "single_step_s": single_times,
        "zero3_losses": zero_losses,
        "single_losses": single_losses,
        "rss_peak": process_peak_bytes(),
    }
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()
    dist.destroy_process_group()


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
    if args.worker:
        worker(args)
    else:
        launch(args)


if __name__ == "__main__":
    main()
