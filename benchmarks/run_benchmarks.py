"""`make bench`: PART vs transformers' FunAsrNanoForConditionalGeneration at identical dimensions, side by side.

Prints one table of ratios and writes benchmarks/RESULTS.md and benchmarks/results.json. Every figure is a ratio
of measurements taken in the same run: timings interleave PART and peer repetitions (A B A B ...) in one process
and report medians with min/max of the per-round ratios; peak memory comes from fresh processes (one per variant).

Sections (each in its own worker process, run one after another):
  models   training step + data collator + front end (interleaved), LLM-frozen step, generation, front end, profile
  memory   peak memory of a training step, one fresh process per variant
  scaling  step time and memory vs clip length (2, 6, 15, 30 s) and vocabulary (8k, 32k, 152k)
  zero3    DeepSpeed ZeRO-3, 2 ranks on CPU (gloo): parameter bytes per rank, step time vs one process

Usage: python benchmarks/run_benchmarks.py [--quick] [--sections models,memory,scaling,zero3] [--dims JSON]
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
MIB = 2**20

TARGETS = {
    "train_throughput": (">=", 1.25),
    "train_peak_memory": ("<=", 0.5),
    "generation_throughput": (">=", 1.0),
    "front_end_share": ("<", 0.05),
    "loader_ratio": (">", 1.0),
    "zero3_held_vs_ideal": ("<=", 1.10),
}


# ----------------------------------------------------------------------------------------------------- helpers
class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every few seconds while the suite runs."""

    def __init__(self, interval: float = 5.0):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), os.getloadavg()[0]))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()

    def between(self, start: float, end: float) -> list[float]:
        return [value for moment, value in self.samples if start <= moment <= end]


class Progress:
    def __init__(self, plan: list[tuple[str, float]]):
        self.plan = plan
        self.start = time.time()
        self.spent_estimate = 0.0

    def begin(self, index: int) -> None:
        name, estimate = self.plan[index]
        elapsed = time.time() - self.start
        remaining = sum(e for _, e in self.plan[index:])
        # scale the remaining estimate by how the finished sections compared with their estimates
        speed = elapsed / self.spent_estimate if self.spent_estimate > 0 else 1.0
        eta = remaining * max(speed, 0.5)
        print(f"\n=== [{index + 1}/{len(self.plan)}] {name} (about {estimate * max(speed, 0.5):.0f} s; "
              f"elapsed {elapsed:.0f} s, ETA for the rest ~{eta / 60:.1f} min; load {os.getloadavg()[0]:.2f}) ===",
              file=sys.stderr, flush=True)

    def end(self, index: int) -> None:
        self.spent_estimate += self.plan[index][1]


def run_worker(command: list[str], environment: dict, timeout: int) -> dict:
    """Runs a worker; its progress (stderr) goes to the terminal, its result is the last JSON line of stdout."""
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, env=environment,
                               timeout=timeout, cwd=ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"error": f"{' '.join(command[1:3])} exited with {completed.returncode}",
                "stdout_tail": completed.stdout[-2000:]}
    return json.loads(lines[-1])


def wait_for_quiet(max_wait: float, threshold: float) -> list[float]:
    """Waits (up to `max_wait` s) for the 1-minute load average to fall below `threshold`."""
    seen = [os.getloadavg()[0]]
    deadline = time.time() + max_wait
    while seen[-1] > threshold and time.time() < deadline:
        print(f"waiting for a quieter machine: load {seen[-1]:.2f} > {threshold:.2f} "
              f"({deadline - time.time():.0f} s left)", file=sys.stderr, flush=True)
        time.sleep(min(30.0, max(1.0, deadline - time.time())))
        seen.append(os.getloadavg()[0])
    return seen


def fmt_ratio(summary: dict | float | None, digits: int = 2) -> str:
    if summary is None:
        return "n/a"
    if isinstance(summary, dict):
        return f"{summary['median']:.{digits}f}x"
    return f"{summary:.{digits}f}x"


def fmt_range(summary: dict | None, digits: int = 2) -> str:
    if not isinstance(summary, dict):
        return "-"
    return f"{summary['min']:.{digits}f}-{summary['max']:.{digits}f}"


def met(value: float | None, target: tuple[str, float]) -> str:
    if value is None:
        return "n/a"
    op, bound = target
    ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
    return "yes" if ok else "NO"


def median_of(summary) -> float | None:
    if summary is None:
        return None
    return summary["median"] if isinstance(summary, dict) else summary


def mib(value: float) -> str:
    return f"{value / MIB:,.0f} MiB"


# ----------------------------------------------------------------------------------------------------- sections
def plan_sections(args) -> list[tuple[str, float]]:
    estimates = {"models": 150, "memory": 90, "scaling": 150, "zero3": 80}
    if args.quick:
        estimates = {name: value / 2 for name, value in estimates.items()}
    return [(name, estimates[name]) for name in args.sections.split(",") if name in estimates]


def section_commands(name: str, args, python: str) -> list[list[str]]:
    dims = args.dims
    if name == "models":
        return [[python, os.path.join(HERE, "bench_models.py"), "--dims", dims, "--fe-calls", "10",
                 "--train-repeats", str(args.train_repeats), "--frozen-repeats", str(args.frozen_repeats),
                 "--gen-repeats", str(args.gen_repeats), "--fe-repeats", str(args.fe_repeats),
                 "--new-tokens", str(args.new_tokens)] + (["--ablation"] if args.ablation else [])]
    if name == "memory":
        variants = [("part", []), ("peer", []), ("part", ["--llm-frozen"]), ("peer", ["--llm-frozen"])]
        if args.ablation:
            variants[2:2] = [("part_full_logits", []), ("part", ["--sparse-embedding-grad"])]
        return [[python, os.path.join(HERE, "bench_memory.py"), "--variant", variant, "--dims", dims] + extra
                for variant, extra in variants]
    if name == "scaling":
        return [
            [python, os.path.join(HERE, "bench_scaling.py"), "--axis", "seconds", "--points", args.seconds_points,
             "--peer-points", args.peer_seconds_points, "--repeats", str(args.scaling_repeats), "--dims", dims],
            [python, os.path.join(HERE, "bench_scaling.py"), "--axis", "vocab", "--points", args.vocab_points,
             "--peer-points", args.peer_vocab_points, "--repeats", str(args.scaling_repeats), "--dims", dims],
        ]
    if name == "zero3":
        return [[python, os.path.join(HERE, "bench_zero3.py"), "--dims", dims, "--repeats", str(args.zero3_repeats)]]
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------------- summary
def build_summary(raw: dict) -> dict:
    """results.json: the ratios (with min/max), the absolute figures as context, the raw worker outputs."""
    out: dict = {}
    models = raw.get("models", {})
    memory = raw.get("memory", [])
    train = models.get("train", {})
    mem = {(m.get("variant"), m.get("llm_frozen")): m for m in memory
           if "variant" in m and not m.get("sparse_embedding_grad")}
    what_if = [m for m in memory if m.get("sparse_embedding_grad")]

    def model_peak(m):  # peak RSS above the interpreter + libraries: model, batch, the step
        return m["process_peak"] - m["rss_after_imports"]

    train_step: dict = {}
    if train:
        train_step.update({
            "throughput_ratio": train["throughput_ratio"]["median"],
            "throughput_ratio_min": train["throughput_ratio"]["min"],
            "throughput_ratio_max": train["throughput_ratio"]["max"],
            "part_step_s": train["part_step_s"]["median"],
            "peer_step_s": train["peer_step_s"]["median"],
            "part_samples_per_s": train["part_samples_per_s"],
            "peer_samples_per_s": train["peer_samples_per_s"],
        })
        if "ablation_target_only_head_ratio" in train:
            train_step["ablation"] = {
                "target_only_head_speedup": train["ablation_target_only_head_ratio"],
                "fewer_audio_positions_speedup": train["ablation_full_logits_throughput_ratio"],
            }
    part_mem, peer_mem = mem.get(("part", False)), mem.get(("peer", False))
    if part_mem and peer_mem:
        train_step.update({
            "peak_memory_ratio": model_peak(part_mem) / model_peak(peer_mem),
            "peak_memory_definition": "peak RSS of a fresh process running the step minus its RSS after imports "
                                      "(model + gradients + batch + activations; not the shared interpreter/libraries)",
            "process_peak_rss_ratio": part_mem["process_peak"] / peer_mem["process_peak"],
            "step_memory_delta_ratio": part_mem["step"]["delta"] / peer_mem["step"]["delta"],
            "part_peak_bytes": model_peak(part_mem),
            "peer_peak_bytes": model_peak(peer_mem),
            "part_process_peak_bytes": part_mem["process_peak"],
            "peer_process_peak_bytes": peer_mem["process_peak"],
            "part_step_delta_bytes": part_mem["step"]["delta"],
            "peer_step_delta_bytes": peer_mem["step"]["delta"],
            "rss_after_imports_bytes": part_mem["rss_after_imports"],
        })
        ablation_mem = mem.get(("part_full_logits", False))
        if ablation_mem:
            train_step.setdefault("ablation", {})["part_full_logits_peak_bytes"] = model_peak(ablation_mem)
        if what_if:
            entry = {"peak_memory_ratio": model_peak(what_if[0]) / model_peak(peer_mem),
                     "part_peak_bytes": model_peak(what_if[0])}
            if "what_if_sparse_embedding_grad_speedup" in train:
                entry["speedup_vs_part"] = train["what_if_sparse_embedding_grad_speedup"]["median"]
                entry["throughput_ratio"] = train["what_if_sparse_embedding_grad_throughput_ratio"]["median"]
            train_step["what_if_sparse_embedding_grad"] = entry
    frozen = train.get("llm_frozen")
    part_frozen, peer_frozen = mem.get(("part", True)), mem.get(("peer", True))
    if frozen or (part_frozen and peer_frozen):
        entry = {}
        if frozen:
            entry.update({"throughput_ratio": frozen["throughput_ratio"]["median"],
                          "throughput_ratio_min": frozen["throughput_ratio"]["min"],
                          "throughput_ratio_max": frozen["throughput_ratio"]["max"],
                          "part_step_s": frozen["part_step_s"]["median"],
                          "peer_step_s": frozen["peer_step_s"]["median"]})
        if part_frozen and peer_frozen:
            entry.update({"peak_memory_ratio": model_peak(part_frozen) / model_peak(peer_frozen),
                          "step_memory_delta_ratio": part_frozen["step"]["delta"] / peer_frozen["step"]["delta"],
                          "part_peak_bytes": model_peak(part_frozen), "peer_peak_bytes": model_peak(peer_frozen)})
        train_step["llm_frozen"] = entry
    if train_step:
        out["train_step"] = train_step

    generate = models.get("generate")
    if generate:
        out["generation"] = {
            "throughput_ratio": generate["throughput_ratio"]["median"],
            "throughput_ratio_min": generate["throughput_ratio"]["min"],
            "throughput_ratio_max": generate["throughput_ratio"]["max"],
            "part_tokens_per_s": generate["part_tokens_per_s"],
            "peer_tokens_per_s": generate["peer_tokens_per_s"],
            "part_rtf": generate["part_rtf"],
            "peer_rtf": generate["peer_rtf"],
            "prefill_ratio": generate["prefill_ratio"]["median"],
            "decode_step_ratio": generate["decode_step_ratio"],
            "new_tokens_per_clip": generate["new_tokens_per_clip"],
        }
    frontend = models.get("frontend")
    if frontend or train:
        entry = {}
        if frontend:
            entry.update({
                "asrfront_vs_whisper": frontend["part_asrfront_vs_whisper"]["median"],
                "numpy_vs_whisper": frontend["part_numpy_vs_whisper"]["median"],
                "asrfront_vs_whisper_30s_padding": frontend["part_asrfront_vs_whisper_30s"]["median"],
                "audio_seconds_per_s": {name: frontend[name]["audio_seconds_per_s"]
                                        for name in ("part_asrfront", "part_numpy", "whisper_hf_longest",
                                                     "whisper_hf_30s")},
            })
        if train:
            entry["share_of_train_step"] = train["front_end_share_of_step"]["median"]
            entry["share_of_train_step_max"] = train["front_end_share_of_step"]["max"]
        out["front_end"] = entry
    if train:
        out["data_pipeline"] = {
            "loader_to_step_ratio": train["loader_to_step_ratio"]["median"],
            "loader_to_step_ratio_min": train["loader_to_step_ratio"]["min"],
            "collator_samples_per_s": train["collator_samples_per_s"],
            "step_samples_per_s": train["part_samples_per_s"],
        }
    zero3 = raw.get("zero3")
    if zero3 and "error" not in zero3:
        out["zero3"] = {
            "world_size": zero3["world_size"],
            "held_fraction_max": zero3["held_fraction_max"],
            "held_vs_ideal": zero3["held_vs_ideal"],
            "step_time_ratio": zero3["step_time_ratio"]["median"],
            "step_time_ratio_min": zero3["step_time_ratio"]["min"],
            "step_time_ratio_max": zero3["step_time_ratio"]["max"],
            "zero3_step_s": zero3["zero3_step_s"]["median"],
            "single_step_s": zero3["single_step_s"]["median"],
        }
    elif zero3:
        out["zero3"] = {"error": zero3.get("error")}
    scaling = raw.get("scaling")
    if scaling:
        out["scaling"] = scaling_rows(scaling)
    return out


def scaling_rows(scaling: list[dict]) -> list[dict]:
    """Flat rows per axis. The vocabulary axis gets its full-vocabulary point from the clip-length axis (the same
    dimensions: the suite's vocabulary at the suite's clip length), so that point is not measured twice."""
    rows = []
    by_axis = {axis["axis"]: axis for axis in scaling if "rows" in axis}
    if "vocab" in by_axis and "seconds" in by_axis:
        base = by_axis["vocab"]["dims"]
        vocab_values = {row["value"] for row in by_axis["vocab"]["rows"]}
        shared = [dict(row, axis="vocab", value=float(base["vocab_size"]), shared_with="seconds")
                  for row in by_axis["seconds"]["rows"] if row["value"] == base["seconds"]]
        if shared and float(base["vocab_size"]) not in vocab_values:
            by_axis["vocab"] = dict(by_axis["vocab"], rows=sorted(by_axis["vocab"]["rows"] + shared,
                                                                  key=lambda r: r["value"]))
    for axis in by_axis.values():
        first = axis["rows"][0]
        for row in axis["rows"]:
            entry = {
                "axis": axis["axis"], "value": row["value"],
                "part_step_s": row["part_step_s"]["median"],
                "part_step_memory_bytes": row["part_step_memory"]["delta"],
                "part_parameter_bytes": 4 * row["part_parameters"],
                "part_time_growth": (row["part_time_growth"]["median"] if "part_time_growth" in row
                                     else row["part_step_s"]["median"] / first["part_step_s"]["median"]),
                "sequence_length": row["sequence_length"],
                "measured_in": row.get("shared_with", axis["axis"]),
            }
            if "peer_step_s" in row:
                entry.update({
                    "peer_step_s": row["peer_step_s"]["median"],
                    "peer_step_memory_bytes": row["peer_step_memory"]["delta"],
                    "peer_parameter_bytes": 4 * row["peer_parameters"],
                    "throughput_ratio": row["throughput_ratio"]["median"],
                    "throughput_ratio_min": row["throughput_ratio"]["min"],
                    "throughput_ratio_max": row["throughput_ratio"]["max"],
                    "step_memory_ratio": row["step_memory_ratio"],
                })
                if "peer_time_growth" in row:
                    entry["peer_time_growth"] = row["peer_time_growth"]["median"]
            rows.append(entry)
    return rows


def ratio_table(raw: dict, summary: dict) -> list[list[str]]:
    """Rows: measurement, PART, peer/reference, ratio (median), min-max, target, met."""
    rows = []
    models = raw.get("models", {})
    train = models.get("train", {})
    ts = summary.get("train_step", {})
    if train:
        rows.append(["train step throughput (PART/peer)", f"{train['part_samples_per_s']:.2f} samples/s",
                     f"{train['peer_samples_per_s']:.2f} samples/s", fmt_ratio(train["throughput_ratio"]),
                     fmt_range(train["throughput_ratio"]), ">= 1.25x",
                     met(median_of(train["throughput_ratio"]), TARGETS["train_throughput"])])
    if "peak_memory_ratio" in ts:
        rows.append(["train step peak memory (PART/peer)", mib(ts["part_peak_bytes"]), mib(ts["peer_peak_bytes"]),
                     fmt_ratio(ts["peak_memory_ratio"]), "-", "<= 0.5x",
                     met(ts["peak_memory_ratio"], TARGETS["train_peak_memory"])])
        rows.append(["  same, whole-process RSS (incl. libraries)", mib(ts["part_process_peak_bytes"]),
                     mib(ts["peer_process_peak_bytes"]), fmt_ratio(ts["process_peak_rss_ratio"]), "-", "(context)", ""])
        rows.append(["  same, step high-water above pre-step RSS", mib(ts["part_step_delta_bytes"]),
                     mib(ts["peer_step_delta_bytes"]), fmt_ratio(ts["step_memory_delta_ratio"]), "-", "(context)", ""])
    if "ablation" in ts and "target_only_head_speedup" in ts["ablation"]:
        ablation = ts["ablation"]
        rows.append(["  ablation: target-only head (PART/PART full logits)", "", "",
                     fmt_ratio(ablation["target_only_head_speedup"]),
                     fmt_range(ablation["target_only_head_speedup"]), "(context)", ""])
        rows.append(["  ablation: fewer audio positions (PART full logits/peer)", "", "",
                     fmt_ratio(ablation["fewer_audio_positions_speedup"]),
                     fmt_range(ablation["fewer_audio_positions_speedup"]), "(context)", ""])
    what_if = ts.get("what_if_sparse_embedding_grad")
    if what_if:
        rows.append(["  what-if: sparse input-embedding grad, peak memory", mib(what_if["part_peak_bytes"]),
                     mib(ts["peer_peak_bytes"]), fmt_ratio(what_if["peak_memory_ratio"]), "-", "(proposed fix)", ""])
        if "throughput_ratio" in what_if:
            rows.append(["  what-if: sparse input-embedding grad, throughput", "", "",
                         fmt_ratio(train["what_if_sparse_embedding_grad_throughput_ratio"]),
                         fmt_range(train["what_if_sparse_embedding_grad_throughput_ratio"]), "(proposed fix)", ""])
    frozen = train.get("llm_frozen")
    frozen_summary = ts.get("llm_frozen", {})
    if frozen:
        rows.append(["train step, LLM frozen: throughput", f"{frozen['part_step_s']['median']:.2f} s/step",
                     f"{frozen['peer_step_s']['median']:.2f} s/step", fmt_ratio(frozen["throughput_ratio"]),
                     fmt_range(frozen["throughput_ratio"]), "(context)", ""])
    if "peak_memory_ratio" in frozen_summary:
        rows.append(["train step, LLM frozen: peak memory", mib(frozen_summary["part_peak_bytes"]),
                     mib(frozen_summary["peer_peak_bytes"]), fmt_ratio(frozen_summary["peak_memory_ratio"]), "-",
                     "(context)", ""])
    generate = models.get("generate")
    if generate:
        rows.append(["generation new tokens/s (PART/peer)", f"{generate['part_tokens_per_s']:.1f} tok/s",
                     f"{generate['peer_tokens_per_s']:.1f} tok/s", fmt_ratio(generate["throughput_ratio"]),
                     fmt_range(generate["throughput_ratio"]), ">= 1.0x",
                     met(median_of(generate["throughput_ratio"]), TARGETS["generation_throughput"])])
        rows.append(["  real-time factor (lower is faster)", f"{generate['part_rtf']:.3f}",
                     f"{generate['peer_rtf']:.3f}", "", "", "(context)", ""])
        rows.append(["  prefill / decode step speed (PART/peer)", "", "",
                     f"{generate['prefill_ratio']['median']:.2f}x / {generate['decode_step_ratio'] or float('nan'):.2f}x",
                     "", "(context)", ""])
    frontend = models.get("frontend")
    if frontend:
        for name, label in (("part_asrfront", "asrfront"), ("part_numpy", "numpy")):
            rows.append([f"front end audio s/s: ours ({label}) / Whisper FE",
                         f"{frontend[name]['audio_seconds_per_s']:.0f} s/s",
                         f"{frontend['whisper_hf_longest']['audio_seconds_per_s']:.0f} s/s",
                         fmt_ratio(frontend[f"{name}_vs_whisper"]), fmt_range(frontend[f"{name}_vs_whisper"]),
                         "(context)", ""])
    if train:
        share = train["front_end_share_of_step"]
        rows.append(["front end share of a train step", f"{train['front_end_s']['median'] * 1000:.0f} ms/batch",
                     f"{train['part_step_s']['median']:.2f} s/step", f"{share['median'] * 100:.1f}%",
                     f"{share['min'] * 100:.1f}-{share['max'] * 100:.1f}%", "< 5%",
                     met(share["median"], TARGETS["front_end_share"])])
        loader = train["loader_to_step_ratio"]
        rows.append(["collator samples/s / step samples/s", f"{train['collator_samples_per_s']:.0f} samples/s",
                     f"{train['part_samples_per_s']:.2f} samples/s", fmt_ratio(loader, 1), fmt_range(loader, 1),
                     "> 1x (never starve)", met(loader["min"], TARGETS["loader_ratio"])])
    zero3 = raw.get("zero3")
    if zero3 and "error" not in zero3:
        rows.append(["ZeRO-3 x2: parameter bytes per rank / total", mib(max(zero3["parameter_bytes_held_per_rank"])),
                     mib(zero3["parameter_bytes_total"]), f"{zero3['held_fraction_max']:.3f}", "-",
                     "<= 0.55 (1/2 + 10%)", met(zero3["held_vs_ideal"], TARGETS["zero3_held_vs_ideal"])])
        rows.append(["ZeRO-3 x2 step time / one process", f"{zero3['zero3_step_s']['median']:.2f} s",
                     f"{zero3['single_step_s']['median']:.2f} s", fmt_ratio(zero3["step_time_ratio"]),
                     fmt_range(zero3["step_time_ratio"]), "(context)", ""])
    elif zero3:
        rows.append(["ZeRO-3", "error", "", "", "", "", zero3.get("error", "")])
    return rows


def render_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown_table(rows: list[list[str]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


HEADER = ["measurement", "PART", "peer / reference", "ratio (median)", "min-max", "target", "met"]


# ----------------------------------------------------------------------------------------------------- RESULTS.md
def write_results_md(path: str, raw: dict, summary: dict, meta: dict) -> None:
    from results_text import results_markdown  # the prose lives next to this file

    with open(path, "w") as f:
        f.write(results_markdown(raw, summary, meta, markdown_table(ratio_table(raw, summary), HEADER)))


# ----------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="models,memory,scaling,zero3")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and scaling points (a smoke run)")
    parser.add_argument("--dims", default="{}", help="JSON overrides of benchmarks.common.Dims")
    parser.add_argument("--train-repeats", type=int, default=None)
    parser.add_argument("--frozen-repeats", type=int, default=None)
    parser.add_argument("--gen-repeats", type=int, default=None)
    parser.add_argument("--fe-repeats", type=int, default=None)
    parser.add_argument("--scaling-repeats", type=int, default=None)
    parser.add_argument("--zero3-repeats", type=int, default=None)
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
    args = parser.parse_args()
    defaults = dict(train_repeats=5, frozen_repeats=2, gen_repeats=5, fe_repeats=5, scaling_repeats=2,
                    zero3_repeats=3)
    if args.quick:
        defaults = dict(train_repeats=2, frozen_repeats=1, gen_repeats=2, fe_repeats=3, scaling_repeats=1,
                        zero3_repeats=2)
        args.seconds_points = "2,6"
        args.vocab_points = "8000"
        args.peer_vocab_points = "8000"
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # the 152k-vocabulary point of the vocabulary axis is the 6 s point of the clip-length axis (same dims)

    cores = os.cpu_count() or 1
    quiet_wait = wait_for_quiet(args.wait_for_quiet, float(cores)) if args.wait_for_quiet > 0 else []
    cache = tempfile.TemporaryDirectory(prefix="part-bench-")
    environment = dict(os.environ, BENCH_CACHE=cache.name, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error",
                       TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    # Passive OpenMP waiting: on a shared machine, spinning worker threads that get descheduled make every parallel
    # region wait for a time slice (measured here: 2 threads 3-4x slower than 1 under load 5); passive waiting
    # keeps both models' timings proportional to their work. The same setting applies to every variant.
    environment.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    if args.threads:
        environment["BENCH_THREADS"] = str(args.threads)
    python = sys.executable
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(python, ROOT), os.path.relpath(__file__, ROOT)]
                       + sys.argv[1:])

    plan = plan_sections(args)
    progress = Progress(plan)
    sampler = LoadSampler()
    sampler.start()
    started = time.time()
    load_start = os.getloadavg()
    raw: dict = {}
    section_load: dict = {}
    print(f"PART benchmarks: {len(plan)} sections, estimated {sum(e for _, e in plan) / 60:.0f} min on an idle "
          f"2-core machine; load average now {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({cores} cores)", file=sys.stderr, flush=True)
    for index, (name, _) in enumerate(plan):
        progress.begin(index)
        section_start = time.time()
        results = [run_worker(cmd, environment, args.timeout) for cmd in section_commands(name, args, python)]
        raw[name] = results if name in ("memory", "scaling") else results[0]
        for result in results:
            if "error" in result:
                print(f"  {name}: {result['error']}", file=sys.stderr, flush=True)
        loads = sampler.between(section_start, time.time())
        section_load[name] = {"mean": statistics.fmean(loads) if loads else os.getloadavg()[0],
                              "max": max(loads) if loads else os.getloadavg()[0],
                              "seconds": time.time() - section_start}
        progress.end(index)
    sampler.stop()
    load_end = os.getloadavg()
    all_loads = [value for _, value in sampler.samples]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    suite_cores = (children.ru_utime + children.ru_stime) / max(time.time() - started, 1e-9)

    sys.path.insert(0, HERE)
    from common import machine_info  # noqa: E402 - after the workers, so the orchestrator stays light

    machine = machine_info()
    machine["torch_threads"] = args.threads or cores
    machine["omp_wait_policy"] = environment["OMP_WAIT_POLICY"]
    meta = {
        "command": command,
        "make_target": "make bench",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "machine": machine,
        "load_average": {
            "start": load_start, "end": load_end,
            "samples_mean": statistics.fmean(all_loads) if all_loads else None,
            "samples_max": max(all_loads) if all_loads else None,
            "samples_min": min(all_loads) if all_loads else None,
            "per_section": section_load,
            "waited_for_quiet": quiet_wait,
            "cores": cores,
            # average CPU cores the suite's own processes used; the rest of the load is other work on the machine
            "suite_cores_mean": suite_cores,
            "others_mean_estimate": (statistics.fmean(all_loads) - suite_cores) if all_loads else None,
        },
        "settings": {k: getattr(args, k) for k in ("quick", "dims", "train_repeats", "frozen_repeats", "gen_repeats",
                                                    "fe_repeats", "scaling_repeats", "zero3_repeats", "new_tokens",
                                                    "ablation", "seconds_points", "peer_seconds_points",
                                                    "vocab_points", "peer_vocab_points")},
    }
    summary = build_summary(raw)
    output = {**meta, **summary, "raw": raw}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(output, f, indent=2)
    write_results_md(os.path.join(args.output_dir, "RESULTS.md"), raw, summary, meta)

    rows = ratio_table(raw, summary)
    print("\n" + render_table(rows, HEADER))
    mean_load = meta["load_average"]["samples_mean"]
    print(f"\nload average during the run: mean {mean_load:.2f}, max {meta['load_average']['samples_max']:.2f} "
          f"on {cores} cores (the suite itself used {suite_cores:.2f} cores on average; other work ~"
          f"{max(mean_load - suite_cores, 0):.2f}); 1-min load before the start {load_start[0]:.2f}; "
          f"took {meta['duration_s'] / 60:.1f} min")
    print(f"wrote {os.path.relpath(os.path.join(args.output_dir, 'RESULTS.md'), ROOT)} and "
          f"{os.path.relpath(os.path.join(args.output_dir, 'results.json'), ROOT)}")
    cache.cleanup()
    failed = [name for name in raw if any("error" in r for r in (raw[name] if isinstance(raw[name], list)
                                                                else [raw[name]]))]
    if failed:
        print(f"sections with errors: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
