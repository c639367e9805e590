"""The README's quick start runs as pasted: its Python blocks, in order, in a fresh process in an empty folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- not run by tests/test_readme.py"


def quick_start_blocks(readme: str) -> list[str]:
    """The ```python blocks of the "## Quick start" section (down to the next "## " heading), without the blocks
    marked as not run (they download from the Hub)."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", section, flags=re.S | re.M):
        before = section[: match.start()].rstrip().splitlines()
        if before and before[-1].startswith(SKIP_MARKER):
            continue
        blocks.append(match.group(1))
    return blocks


def test_quick_start_blocks_are_found():
    blocks = quick_start_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    assert any("apply_transcription_request" in block for block in blocks)
    assert any("output_labels=True" in block for block in blocks)


def test_readme_quick_start_runs_as_pasted(tmp_path):
    script = "\n".join(quick_start_blocks((REPO / "README.md").read_text()))
    (tmp_path / "quick_start.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "quick_start.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "my-part" / "config.json").exists()
