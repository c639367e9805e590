"""Runs every multi-rank test file again and again (`make repeat-multi-rank`): a teardown abort or a rare hang
shows up in one run of many, so a change to process-group set-up or teardown is checked this way before it lands.

Each round runs each file once with pytest, one after another (the 2-rank runs need both cores). Every run's output
is kept in `--log-dir`; a run fails when pytest does not exit 0 or when any rank's output holds an abort message
(`terminate called`, `Aborted`, `core dumped`, torchrun's `exitcode: -6`). Exits 1 after the first round with a
failure, 0 when every run passed.

    python tests/repeat_multi_rank.py --rounds 20 --log-dir outputs/repeat-multi-rank
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FILES = (
    "tests/test_rank_alignment.py",
    "tests/test_ddp.py",
    "tests/test_fsdp2.py",
    "tests/test_zero3.py",
    "tests/test_zero3_components.py",
    "tests/test_token_budget.py::test_two_ddp_ranks_with_token_budgets_run_equal_steps_and_stay_identical",
)
"""Every test that launches two ranks with torchrun (`part_fixtures.run_two_ranks`)."""

ABORT = re.compile(r"terminate called|Aborted|core dumped|exitcode: -6")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--log-dir", default="outputs/repeat-multi-rank")
    parser.add_argument("files", nargs="*", default=list(FILES), help="pytest targets (default: all multi-rank tests)")
    args = parser.parse_args(argv)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    failures = 0
    for round_index in range(1, args.rounds + 1):
        for target in args.files:
            name = Path(target.split("::")[0]).stem
            started = time.time()
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target], cwd=repo,
                                 env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            (log_dir / f"round{round_index:02d}_{name}.log").write_text(run.stdout)
            aborts = len(ABORT.findall(run.stdout))
            failed = run.returncode != 0 or aborts > 0
            failures += failed
            last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
            print(f"round {round_index}/{args.rounds} {name}: exit {run.returncode}, abort messages {aborts}, "
                  f"{time.time() - started:.0f} s{' FAILED' if failed else ''} ({last})", flush=True)
        if failures:
            print(f"{failures} failed run(s) in round {round_index}; outputs in {log_dir}/", flush=True)
            return 1
    print(f"{args.rounds} rounds x {len(args.files)} files: every run passed with no abort message.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
