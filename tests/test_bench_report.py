"""The benchmark report (`benchmarks/report.py`, `run_benchmarks.py --report`): every figure is built from the raw
measurements the workers write, and a saved results.json can be reported again without measuring."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# loaded by path: benchmarks/ is not a package, and putting it on sys.path would expose its `common` to every test
_spec = importlib.util.spec_from_file_location("bench_report", os.path.join(ROOT, "benchmarks", "report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

MIB = 2**20


def memory_record(variant: str, llm_frozen: bool, peak_mib: float, step_mib: float) -> dict:
    """One `bench_memory.py` output, as the memory section records it."""
    return {"variant": variant, "llm_frozen": llm_frozen, "rss_after_imports": 300 * MIB,
            "process_peak": (300 + peak_mib) * MIB, "step": {"delta": step_mib * MIB}}


def test_memory_figures_from_the_memory_section():
    raw = {"memory": [memory_record("part", False, 800, 400), memory_record("peer", False, 2000, 1000),
                      memory_record("part", True, 300, 100), memory_record("peer", True, 1000, 500)]}
    by_key = {row["key"]: row["value"] for row in report.figures(raw)}
    assert by_key["train_peak_memory"] == 0.4 and by_key["train_step_memory"] == 0.4
    assert by_key["llm_frozen_peak_memory"] == 0.3 and by_key["llm_frozen_step_memory"] == 0.2


def test_report_rebuilds_results_from_a_saved_run(tmp_path):
    with open(os.path.join(ROOT, "benchmarks", "results.json")) as f:
        saved = json.load(f)
    saved["figures"] = []
    (tmp_path / "saved.json").write_text(json.dumps(saved))
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "run_benchmarks.py"), "--report",
               str(tmp_path / "saved.json"), "--output-dir", str(tmp_path / "out")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    rebuilt = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rebuilt["raw"] == saved["raw"] and rebuilt["date"] == saved["date"]
    assert {"train_throughput", "llm_frozen_peak_memory", "generation_throughput"} <= {
        row["key"] for row in rebuilt["figures"]}
    markdown = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "train step, LLM frozen: peak memory" in markdown
    # the saved run: other work 0.06 cores on average, the 1-min load 1.12 at the start (make bench's own install)
    assert saved["load_average"]["others_mean_estimate"] < 0.5 and "The machine was quiet." in markdown
