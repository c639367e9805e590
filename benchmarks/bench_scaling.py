"""Worker: how a training step's time and memory grow with the work, PART and (where cheap) the peer.

`--axis seconds`: clip length (vocabulary fixed); `--axis vocab`: vocabulary (clip length fixed). At each point
PART and the peer run interleaved (A B A B, after one warm-up each) and the step's memory is its RSS high-water
mark above the RSS before it (gradients dropped and allocator caches released first), measured in this process.
Usage: python benchmarks/bench_scaling.py --axis seconds --points 2,6,15,30 --peer-points 2,6
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Dims,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    clips,
    emit_result,
    interleave,
    log,
    measure_peak,
    paired_ratios,
    parameter_count,
    release_memory,
    set_threads,
    summary,
    train_step,
    training_batches,
)


def _number(text: str) -> float:
    text = text.strip().lower()
    if text.endswith("k"):
        return float(text[:-1]) * 1000
    return float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--axis", choices=("seconds", "vocab"), required=True)
    parser.add_argument("--points", required=True, help="comma-separated values (vocab accepts 8k, 32k, 151936)")
    parser.add_argument("--peer-points", default="", help="the subset of points where the peer runs too")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dims", default="{}")
    args = parser.parse_args()

    set_threads()
    base = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    points = [_number(p) for p in args.points.split(",") if p]
    peer_points = {_number(p) for p in args.peer_points.split(",") if p}

    # Every point's models and batches are built first, then all points run interleaved in the same rounds, so the
    # growth from point to point is a ratio measured side by side too (not across minutes of changing load).
    models, functions, info = {}, {}, {}
    shared = None
    for point in points:
        dims = base.with_(seconds=point) if args.axis == "seconds" else base.with_(vocab_size=int(point))
        if args.axis == "vocab" or shared is None:
            part = build_part(dims, tokenizer).train()
            peer = build_peer(dims, tokenizer, part).train()
            shared = (part, peer)
        part, peer = shared
        part_processor, peer_processor = build_processors(part.config, tokenizer)
        part_batch, peer_batch = training_batches(dims, part_processor, peer_processor, tokenizer, clips(dims))
        functions[("part", point)] = lambda m=part, b=part_batch: train_step(m, b)
        models[("part", point)] = part
        if point in peer_points:
            functions[("peer", point)] = lambda m=peer, b=peer_batch: train_step(m, b)
            models[("peer", point)] = peer
        info[point] = {"sequence_length": {"part": int(part_batch["input_ids"].shape[1]),
                                           "peer": int(peer_batch["input_ids"].shape[1])},
                       "part_parameters": parameter_count(part), "peer_parameters": parameter_count(peer)}
    names = {key: f"{key[0]}@{key[1]:g}" for key in functions}
    log(f"scaling {args.axis}: {len(functions)} variants ({', '.join(names.values())}), {args.repeats} interleaved "
        "rounds after a warm-up round")
    times = interleave({names[k]: f for k, f in functions.items()}, repeats=args.repeats, warmup=1,
                       label=f"scaling {args.axis}")
    memory = {}
    # The first RSS high-water measurement in a process reads 100-200 MiB high (one-time allocations of the first
    # measured step after the allocator caches are released), so one throwaway measurement comes first.
    first_key = next(iter(functions))
    measure_peak(functions[first_key], models[first_key])
    for key, function in functions.items():
        measured = measure_peak(function, models[key])
        memory[key] = {k: v for k, v in measured.items() if k != "out"}
        models[key].zero_grad(set_to_none=True)
    release_memory()

    rows = []
    first = points[0]
    for point in points:
        part_times = times[names[("part", point)]]
        row = {
            "axis": args.axis,
            "value": point,
            **info[point],
            "part_step_s": summary(part_times),
            "part_step_memory": memory[("part", point)],
            # growth against the first point, per round
            "part_time_growth": paired_ratios(part_times, times[names[("part", first)]]),
        }
        if ("peer", point) in functions:
            peer_times = times[names[("peer", point)]]
            row["peer_step_s"] = summary(peer_times)
            row["peer_step_memory"] = memory[("peer", point)]
            row["throughput_ratio"] = paired_ratios(peer_times, part_times)
            row["step_memory_ratio"] = memory[("part", point)]["delta"] / memory[("peer", point)]["delta"]
            if ("peer", first) in functions:
                row["peer_time_growth"] = paired_ratios(peer_times, times[names[("peer", first)]])
        rows.append(row)
    emit_result({"axis": args.axis, "dims": base.to_dict(), "rows": rows})


if __name__ == "__main__":
    main()
