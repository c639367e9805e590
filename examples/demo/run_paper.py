"""`make paper`: PART, Baseline-2stage and the paper's three cumulative ablations on the demo's corpus and stand-ins,
at the demo's budget and settings on several seeds, reported in the shape of the paper's tables (per language,
averages, deltas vs PART, mean ± spread), with a verdict per task average: whether PART beats each system, and each
ablation step the one before it, beyond the seed spread.

Every run is resumable (its folder is reused), so an interrupted `make paper` continues where it stopped.

    python examples/demo/run_paper.py --output_dir outputs/paper --seeds 0 1 2
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import HfArgumentParser  # noqa: E402

from examples.demo.corpus import PICO_TEST_SPLIT  # noqa: E402
from examples.demo.run_demo import (  # noqa: E402
    DemoArguments,
    chance_metrics,
    finished_run,
    prepare,
    run_settings,
    train_and_evaluate,
)
from trainers.stages import PRESETS  # noqa: E402

ROW_ORDER = ("wer_", "cer_", "asr_avg_error", "bleu_", "s2tt_avg_bleu")


@dataclass
class PaperArguments(DemoArguments):
    """The demo's settings, plus the systems and seeds to compare."""

    output_dir: str = field(default="outputs/paper", metadata={"help": "Where every run and the table go."})
    max_steps: int = field(
        default=DemoArguments.max_steps,
        metadata={"help": "PART optimizer steps per run: the demo's budget (the 15 runs take about 6 h on 2 cores, "
                  "resumable; --max_steps 1000 gives a quick comparison in about 1.5 h)."},
    )
    presets: list[str] = field(default_factory=lambda: list(PRESETS), metadata={"help": "Schedules to compare."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds (init, data order)."})
    evaluate_stages: bool = field(default=False, metadata={"help": "Also score the test split after every stage."})
    workers: int = field(
        default=1,
        metadata={"help": "Runs trained at once, each in its own process on its share of the cores. Default 1: every "
                  "run on all cores, as `make demo` trains (the torch thread count moves a run's results like a "
                  "seed, so one table should use one setting); more workers suit a machine with many cores."},
    )


def _scores(result: dict) -> dict[str, float]:
    """A run's test scores by metric name without the `test_` prefix: the test split's, then (`pico_...`) those of
    the same test texts spoken by Pico's test voices."""
    scores = {**result["metrics"], **result.get("test_pico_metrics", {})}
    return {k[len("test_"):]: v for k, v in scores.items() if k.startswith("test_")}


def _row_key(name: str) -> tuple[int, int, str]:
    engine, metric = (1, name[len("pico_"):]) if name.startswith("pico_") else (0, name)
    for rank, prefix in enumerate(ROW_ORDER):
        if metric.startswith(prefix):
            return engine, rank, metric
    return engine, len(ROW_ORDER), metric


def results_table(
    runs: dict[str, list[dict]], reference: str = "part", chance: dict[str, float] | None = None
) -> tuple[str, dict]:
    """Markdown table: one row per metric (the test split's, then Pico's test voices'), one column per system (mean
    ± std over seeds, Δ vs `reference`), and a last column with the chance level (`chance_metrics`), if given."""
    names = {name for rs in runs.values() for r in rs for name in _scores(r)}
    metrics = sorted((name for name in names if _row_key(name)[1] < len(ROW_ORDER)), key=_row_key)
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for system, results in runs.items():
        stats[system] = {}
        for metric in metrics:
            values = [r[metric] for r in map(_scores, results) if metric in r]
            if values:
                stats[system][metric] = {
                    "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
    systems = list(runs)
    columns = systems + (["chance"] if chance else [])
    header = "| metric (lower WER/CER, higher BLEU is better) | " + " | ".join(columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for metric in metrics:
        cells = []
        for system in systems:
            entry = stats[system].get(metric)
            if entry is None:
                cells.append("–")
                continue
            cell = f"{entry['mean']:.1f} ± {entry['std']:.1f}" if entry["n"] > 1 else f"{entry['mean']:.1f} (1 seed)"
            base = stats.get(reference, {}).get(metric)
            if system != reference and base is not None:
                cell += f" (Δ {entry['mean'] - base['mean']:+.1f})"
            cells.append(cell)
        if chance:
            cells.append(f"{chance[metric]:.1f}" if metric in chance else "–")
        bold = metric.endswith(("asr_avg_error", "s2tt_avg_bleu"))
        name = f"**{metric}**" if bold else metric
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


VERDICT_METRICS = {
    "asr_avg_error": ("ASR average error %", -1),
    "s2tt_avg_bleu": ("S2TT average BLEU", 1),
    "pico_asr_avg_error": ("Pico test voices: ASR average error %", -1),
    "pico_s2tt_avg_bleu": ("Pico test voices: S2TT average BLEU", 1),
}
"""The task averages `verdicts` compares, with their titles and signs (1: higher is better)."""
ABLATION_CHAIN = ("part", "no_task_staging", "no_task_staging_no_lora", "no_task_staging_no_lora_no_progressive")
"""The paper's cumulative ablations: each drops one more of PART's parts than the one before."""


def verdicts(runs: dict[str, list[dict]], reference: str = "part") -> list[str]:
    """Per task average: `reference` against every other system, then each step of `ABLATION_CHAIN` against the one
    before it; each line gives the means over seeds, their difference and whether it lies beyond the seed spread
    (every seed of the better system beats every seed of the other), then, where two or more seeds are shared, on how
    many of them the first system beats the second seed by seed (a seed sets the data order and the new weights'
    initial values in every system, so its runs are paired: a count, not a significance test)."""
    steps = list(zip(ABLATION_CHAIN, ABLATION_CHAIN[1:]))[1:]  # the first step is a `reference` pair already
    pairs = [(reference, system) for system in runs if system != reference] + steps
    lines = []
    for metric, (title, sign) in VERDICT_METRICS.items():
        for first, second in pairs:
            ours_by_run, theirs_by_run = ([(r.get("seed"), scores[metric]) for r in runs.get(system, [])
                                           if metric in (scores := _scores(r))] for system in (first, second))
            ours, theirs = ([value for _, value in by_run] for by_run in (ours_by_run, theirs_by_run))
            if not ours or not theirs:
                continue
            gain = sign * (statistics.mean(ours) - statistics.mean(theirs))
            winner, better, worse = (first, ours, theirs) if gain > 0 else (second, theirs, ours)
            if len(ours) < 2 or len(theirs) < 2:
                spread = "one seed on a side: no spread to compare with"
            elif min(sign * v for v in better) > max(sign * v for v in worse):
                spread = "beyond the seed spread (every seed of the better system beats every seed of the other)"
            else:
                spread = "within the seed spread (the seeds' ranges overlap)"
            verdict = f"{winner} better by {abs(gain):.1f}, {spread}" if gain else "equal means"
            ours_by_seed, theirs_by_seed = ({seed: value for seed, value in by_run if seed is not None}
                                             for by_run in (ours_by_run, theirs_by_run))
            shared = ours_by_seed.keys() & theirs_by_seed.keys()
            if len(shared) >= 2:
                wins = sum(sign * (ours_by_seed[s] - theirs_by_seed[s]) > 0 for s in shared)
                verdict += f"; paired by seed, {first} better on {wins} of {len(shared)}"
            lines.append(f"- {title}: {first} {statistics.mean(ours):.1f} vs {second} {statistics.mean(theirs):.1f}: "
                         f"{verdict}.")
    return lines


def _train_in_workers(pending: list[tuple[str, int]], argv: Sequence[str], out: Path, workers: int) -> None:
    """Trains the pending (preset, seed) runs, `workers` at a time, each in a process of its own (this script with
    `--presets P --seeds S --workers 1`), with `cores // workers` torch threads; logs go to `<run folder>.log`."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    queue, running = list(pending), []
    while queue or running:
        while queue and len(running) < workers:
            preset, seed = queue.pop(0)
            log = out / preset / f"seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, str(Path(__file__).resolve()), *argv, "--presets", preset, "--seeds", str(seed),
                       "--workers", "1"]  # fmt: skip
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            print(f"===== {preset}, seed {seed}: training in a worker process (log: {log}) =====")
            running.append((preset, seed, subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)))
        time.sleep(2)
        for entry in list(running):
            preset, seed, process = entry
            if process.poll() is not None:
                running.remove(entry)
                if process.returncode != 0:
                    raise RuntimeError(f"The {preset} run with seed {seed} failed (exit {process.returncode}); see "
                                       f"{out / preset / f'seed{seed}.log'}. Finished runs are kept: rerun to resume.")  # fmt: skip


def run_paper(args: PaperArguments, argv: Sequence[str] = ()) -> dict:
    started = time.time()
    out = Path(args.output_dir)
    corpus, encoder_path, llm_path, _ = prepare(args)
    settings = run_settings(args, encoder_path, llm_path)
    pending = [(p, s) for p in args.presets for s in args.seeds if finished_run(out / p / f"seed{s}", p, s, settings) is None]
    if args.workers > 1 and len(pending) > 1:
        _train_in_workers(pending, argv, out, args.workers)
    runs: dict[str, list[dict]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            run_dir = out / preset / f"seed{seed}"
            result = finished_run(run_dir, preset, seed, settings)
            if result is None:
                print(f"\n===== {preset}, seed {seed} =====")
                result = train_and_evaluate(args, corpus, encoder_path, llm_path, run_dir, preset, seed)
            runs.setdefault(preset, []).append(result)
    chance = chance_metrics(corpus["train"], corpus["test"], seed=args.seed)
    if PICO_TEST_SPLIT in corpus:
        pico_chance = chance_metrics(corpus["train"], corpus[PICO_TEST_SPLIT], seed=args.seed)
        chance.update({f"pico_{name}": value for name, value in pico_chance.items()})
    table, stats = results_table(runs, chance=chance)
    note = (
        f"Seeds {args.seeds}; {args.max_steps} PART steps per run, batch {args.batch_size}; test split of the demo "
        f"corpus ({args.test_items} items per language). Mean ± standard deviation over seeds; Δ is the mean's "
        "difference from `part`. `chance` answers every test item with a random training text of the same task "
        "and languages (a system that does not listen). Rows `pico_*`: the same test texts (Pico's languages) spoken by "
        "Pico's test voices, "
        + ("an engine no training utterance uses.\n" if not args.train_pico_share else
           f"held out from its training voices (which speak {args.train_pico_share:.0%} of the training utterances).\n")
    )
    comparison = verdicts(runs)
    report = note + "\n" + table + "\n\n" + "\n".join(comparison) + "\n"
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"arguments": vars(args), "stats": stats, "chance": chance,
                                                  "verdicts": comparison}, indent=2, default=str))
    print("\n" + report)
    print(f"\nDone in {(time.time() - started) / 60:.1f} min; table in {out / 'results.md'}")
    return stats


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = HfArgumentParser(PaperArguments).parse_args_into_dataclasses(args=argv)
    return run_paper(args, argv)


if __name__ == "__main__":
    main()
