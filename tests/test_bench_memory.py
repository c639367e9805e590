"""The benchmark suite's memory reader (`benchmarks/common.py`): a process's peak is not lost when the step's
high-water mark is reset."""

import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

# A fresh process: 400 MiB touched and freed, then a measured step of nothing. The process peak must still count
# those 400 MiB (Linux resets ru_maxrss together with VmHWM).
SCRIPT = f"""
import sys
sys.path.insert(0, {BENCHMARKS!r})
import numpy as np
from common import measure_peak, process_peak_bytes, rss_bytes
block = np.ones(400 * 2**20, dtype=np.uint8)
with_block = rss_bytes()
del block
step = measure_peak(lambda: None)
print(step["reset_ok"], with_block, step["peak"], process_peak_bytes())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the reader's VmHWM reset is Linux-only")
def test_process_peak_survives_the_step_reset():
    output = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    reset_ok, with_block, step_peak, process_peak = output.split()
    assert reset_ok == "True", "clear_refs was not allowed: the test would not exercise the reset"
    with_block, step_peak, process_peak = int(with_block), int(step_peak), int(process_peak)
    assert step_peak < with_block - 300 * 2**20  # the step's own mark starts after the block is gone
    assert process_peak >= with_block
