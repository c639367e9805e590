"""Worker: how a training step's time and memory grow with the work, PART and (where cheap) the peer.

`--axis seconds`: clip length (vocabulary fixed); `--axis vocab`: vocabulary (clip length fixed). Every point's models
and batches are built first, then all points run interleaved in the same rounds (`common.interleave`), so the growth
from point to point is measured side by side too. The step's memory is its RSS high-water mark above the RSS before
it (gradients dropped and allocator caches released first), measured in this process.
Usage: python benchmarks/bench_scaling.py --axis seconds --points 2,6,15,30 --peer-points 2,6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Dims,
    batches,
    build_part,
    build_peer,
    build_processors,
    build_tokenizer,
    emit_result,
    interleave,
    log,
    measure_peak,
    set_threads,
    train_step,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--axis", choices=("seconds", "vocab"), required=True)
    parser.add_argument("--points", required=True, help="comma-separated values")
    parser.add_argument("--peer-points", default="", help="the subset of points where the peer runs too")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dims", default="{}")
    args = parser.parse_args()

    set_threads()
    base = Dims(**json.loads(args.dims))
    tokenizer = build_tokenizer()
    peer_points = {float(p) for p in args.peer_points.split(",") if p}
    functions, models, points = {}, {}, {}
    for point in (float(p) for p in args.points.split(",") if p):
        dims = replace(base, seconds=point) if args.axis == "seconds" else replace(base, vocab_size=int(point))
        if args.axis == "vocab" or not models:  # the clip-length axis reuses one pair of models
            part = build_part(dims, tokenizer).train()
            peer = build_peer(dims, tokenizer, part).train()
        part_batch, peer_batch = batches(dims, *build_processors(part.config, tokenizer), tokenizer)
        points[f"{point:g}"] = {"value": point, "sequence_length": {"part": part_batch["input_ids"].shape[1],
                                                                    "peer": peer_batch["input_ids"].shape[1]}}
        for name, model, batch in (("part", part, part_batch), ("peer", peer, peer_batch)):
            if name == "part" or point in peer_points:
                functions[f"{name}@{point:g}"] = lambda m=model, b=batch: train_step(m, b)
                models[f"{name}@{point:g}"] = model
    log(f"scaling {args.axis}: {', '.join(functions)}, {args.repeats} interleaved rounds")
    times = interleave(functions, args.repeats, label=f"scaling {args.axis}")
    # The first RSS high-water measurement in a process reads 100-200 MiB high (one-time allocations of the first
    # measured step after the allocator caches are released), so one throwaway measurement comes first.
    measure_peak(*next(zip(functions.values(), models.values())))
    memory = {key: measure_peak(fn, models[key])["delta"] for key, fn in functions.items()}
    for key, point in points.items():
        for name in ("part", "peer"):
            if f"{name}@{key}" in times:
                point[name] = {"times": times[f"{name}@{key}"], "step_memory": memory[f"{name}@{key}"]}
    emit_result({"axis": args.axis, "dims": asdict(base), "points": list(points.values())})


if __name__ == "__main__":
    main()
