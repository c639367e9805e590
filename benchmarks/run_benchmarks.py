"""`make bench`: PART vs transformers' FunAsrNanoForConditionalGeneration at identical dimensions, side by side.

Prints the table of ratios and writes benchmarks/RESULTS.md and benchmarks/results.json. Every figure is a ratio
of measurements taken in the same run: timings interleave PART and peer calls (A B, B A, ...) in one process and
report the median with the min-max of the per-round ratios; peak memory comes from fresh processes (one per variant).

Sections (each in its own worker process, run one after another):
  models   training step + data collator + front end (interleaved), LLM-frozen step, generation, front end, profile
  memory   peak memory of a training step, one fresh process per variant
  scaling  step time and memory vs clip length (2, 6, 15, 30 s) and vocabulary (8k, 32k, 152k)
  zero3    DeepSpeed ZeRO-3, 2 ranks on CPU (gloo): parameter bytes per rank, step time vs one process
  batching token-budget vs fixed batches on a long-tailed mixture: padding shares, audio s/s at equal peak memory

Usage: python benchmarks/run_benchmarks.py [--quick] [--sections models,memory,scaling,zero3,batching] [--dims JSON]
                                           [--wait-for-quiet SECONDS] [--output-dir benchmarks]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ESTIMATES = {"models": 180, "memory": 90, "scaling": 150, "zero3": 80,
             "batching": 120}  # seconds on an idle 2-core machine


def section_commands(name: str, args, python: str) -> list[list[str]]:
    worker, dims = (lambda script: [python, os.path.join(HERE, script)]), ["--dims", args.dims]
    if name == "models":
        return [worker("bench_models.py") + dims + [
            "--train-repeats", str(args.train_repeats), "--frozen-repeats", str(args.frozen_repeats),
            "--gen-repeats", str(args.gen_repeats), "--fe-repeats", str(args.fe_repeats),
            "--new-tokens", str(args.new_tokens)] + (["--ablation"] if args.ablation else [])]
    if name == "memory":
        variants = [("part", []), ("peer", []), ("part", ["--llm-frozen"]), ("peer", ["--llm-frozen"])]
        if args.ablation:
            variants[2:2] = [("part_full_logits", [])]
        return [worker("bench_memory.py") + dims + ["--variant", variant] + extra for variant, extra in variants]
    if name == "scaling":
        return [worker("bench_scaling.py") + dims + ["--axis", axis, "--points", points, "--peer-points", peer,
                                                     "--repeats", str(args.scaling_repeats)]
                for axis, points, peer in (("seconds", args.seconds_points, args.peer_seconds_points),
                                           ("vocab", args.vocab_points, args.peer_vocab_points))]
    if name == "zero3":
        return [worker("bench_zero3.py") + dims + ["--repeats", str(args.zero3_repeats)]]
    if name == "batching":
        return [worker("bench_batching.py") + dims + ["--rounds", str(args.batching_repeats)]]
    raise ValueError(f"unknown section {name!r}; choose from {', '.join(ESTIMATES)}")


def run_worker(command: list[str], environment: dict, timeout: int) -> dict:
    """Runs a worker; its progress (stderr) goes to the terminal, its result is the last JSON line of stdout."""
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, env=environment,
                               timeout=timeout, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"error": f"{' '.join(command[1:3])} exited with {completed.returncode}",
                "log_tail": completed.stdout[-2000:]}
    return json.loads(lines[-1])


def write_report(raw: dict, meta: dict, output_dir: str) -> None:
    """results.json (raw measurements first, so a failing report loses no measurement; `--report` rebuilds from
    it), then the figures, RESULTS.md and the printed table."""
    sys.path.insert(0, HERE)
    from report import figures, measurements, results_markdown, results_table
    from torch.utils.benchmark import Compare

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")

    def save(rows: list[dict], timings: list) -> None:
        with open(path, "w") as f:
            json.dump({**meta, "figures": rows, "timings": [
                {"label": m.label, "sub_label": m.sub_label, "description": m.description, "median_s": m.median,
                 "iqr_s": m.iqr, "times_s": m.times} for m in timings], "raw": raw}, f, indent=2)

    save([], [])
    rows = figures(raw)
    timings = measurements(raw, meta["machine"]["torch_threads"])
    save(rows, timings)
    compare = str(Compare(timings)).strip() if timings else ""
    with open(os.path.join(output_dir, "RESULTS.md"), "w") as f:
        f.write(results_markdown(raw, rows, meta, compare))
    print("\n" + results_table(rows) + "\n\n" + compare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="models,memory,scaling,zero3,batching")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and scaling points (a smoke run)")
    parser.add_argument("--dims", default="{}", help="JSON overrides of benchmarks.common.Dims")
    for name in ("train", "frozen", "gen", "fe", "scaling", "zero3", "batching"):
        parser.add_argument(f"--{name}-repeats", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--no-ablation", dest="ablation", action="store_false",
                        help="skip PART with its target-only LM head switched off")
    parser.add_argument("--seconds-points", default="2,6,15,30")
    parser.add_argument("--peer-seconds-points", default="2,6")
    parser.add_argument("--vocab-points", default="8000,32000,151936")
    parser.add_argument("--peer-vocab-points", default="8000,32000,151936")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: all cores)")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE"),
                        help="OMP_WAIT_POLICY of the workers (unless set in the environment)")
    parser.add_argument("--wait-for-quiet", type=float, default=0.0,
                        help="wait up to this many seconds for the 1-min load average to fall below the core count")
    parser.add_argument("--output-dir", default=HERE)
    parser.add_argument("--timeout", type=int, default=900, help="per worker process, seconds")
    parser.add_argument("--report", metavar="RESULTS_JSON", default=None,
                        help="measure nothing: rebuild the figures, RESULTS.md and results.json (in --output-dir) "
                             "from the raw measurements of an earlier run's results.json")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        meta = {key: value for key, value in saved.items() if key not in ("figures", "timings", "raw")}
        write_report(saved["raw"], meta, args.output_dir)
        return
    repeats = dict(train=5, frozen=2, gen=5, fe=5, scaling=2, zero3=3, batching=3)
    if args.quick:
        repeats = dict(train=2, frozen=1, gen=2, fe=3, scaling=1, zero3=2, batching=1)
        args.seconds_points, args.vocab_points, args.peer_vocab_points = "2,6", "8000", "8000"
    for name, value in repeats.items():
        if getattr(args, f"{name}_repeats") is None:
            setattr(args, f"{name}_repeats", value)

    cores = os.cpu_count() or 1
    deadline, waited = time.time() + args.wait_for_quiet, []
    while args.wait_for_quiet > 0 and os.getloadavg()[0] > cores and time.time() < deadline:
        waited.append(os.getloadavg()[0])
        print(f"waiting for a quieter machine: load {waited[-1]:.2f} > {cores} ({deadline - time.time():.0f} s left)",
              file=sys.stderr, flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.time())))
    cache = tempfile.TemporaryDirectory(prefix="part-bench-")
    environment = dict(os.environ, BENCH_CACHE=cache.name, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error",
                       TOKENIZERS_PARALLELISM="false",
                       PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    # Passive OpenMP waiting: on a shared machine, spinning worker threads that get descheduled make every parallel
    # region wait for a time slice (measured here: 2 threads 3-4x slower than 1 under load 5); passive waiting
    # keeps both models' timings proportional to their work. The same setting applies to every variant.
    environment.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    if args.threads:
        environment["BENCH_THREADS"] = str(args.threads)

    samples, stop = [], threading.Event()  # (time, 1-minute load average) every 5 s while the suite runs

    def sample_load():
        while True:
            samples.append((time.time(), os.getloadavg()[0]))
            if stop.wait(5.0):
                return

    threading.Thread(target=sample_load, daemon=True).start()
    sections = [name for name in args.sections.split(",") if name]
    started, load_start = time.time(), os.getloadavg()
    raw, per_section = {}, {}
    for index, name in enumerate(sections):
        estimate = ESTIMATES.get(name, 0) / (2 if args.quick else 1)
        print(f"\n=== [{index + 1}/{len(sections)}] {name} (about {estimate:.0f} s idle; elapsed "
              f"{time.time() - started:.0f} s; load {os.getloadavg()[0]:.2f}) ===", file=sys.stderr, flush=True)
        section_start = time.time()
        results = [run_worker(command, environment, args.timeout)
                   for command in section_commands(name, args, sys.executable)]
        raw[name] = results if name in ("memory", "scaling") else results[0]
        for result in results:
            if "error" in result:
                print(f"  {name}: {result['error']}", file=sys.stderr, flush=True)
        loads = [value for moment, value in samples if moment >= section_start] or [os.getloadavg()[0]]
        per_section[name] = {"mean": statistics.fmean(loads), "max": max(loads), "seconds": time.time() - section_start}
    stop.set()
    loads = [value for _, value in samples]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    suite_cores = (children.ru_utime + children.ru_stime) / max(time.time() - started, 1e-9)

    sys.path.insert(0, HERE)  # after the workers, so the orchestrator stays light while they run
    from common import machine_info

    meta = {
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT),
                                                      os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "make_target": "make bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "machine": {**machine_info(), "torch_threads": args.threads or cores,
                    "omp_wait_policy": environment["OMP_WAIT_POLICY"]},
        "load_average": {
            "start": load_start, "end": os.getloadavg(), "cores": cores, "per_section": per_section,
            "samples_mean": statistics.fmean(loads), "samples_min": min(loads), "samples_max": max(loads),
            "waited_for_quiet": waited,
            # average CPU cores the suite's own processes used; the rest of the load is other work on the machine
            "suite_cores_mean": suite_cores, "others_mean_estimate": statistics.fmean(loads) - suite_cores,
        },
        "settings": {k: v for k, v in vars(args).items()
                     if k not in ("output_dir", "timeout", "wait_for_quiet", "report")},
    }
    write_report(raw, meta, args.output_dir)
    print(f"\nload average during the run: mean {statistics.fmean(loads):.2f}, max {max(loads):.2f} on {cores} cores "
          f"(the suite itself used {suite_cores:.2f} cores on average; other work ~"
          f"{max(statistics.fmean(loads) - suite_cores, 0):.2f}); 1-min load before the start {load_start[0]:.2f}; "
          f"took {meta['duration_s'] / 60:.1f} min")
    print(f"wrote {os.path.relpath(os.path.join(args.output_dir, 'RESULTS.md'))} and "
          f"{os.path.relpath(os.path.join(args.output_dir, 'results.json'))}")
    cache.cleanup()
    failed = [name for name, results in raw.items()
              if any("error" in r for r in (results if isinstance(results, list) else [results]))]
    if failed:
        print(f"sections with errors: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
