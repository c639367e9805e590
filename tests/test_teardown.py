"""`end_distributed` (trainers/teardown.py): at the end of a multi-rank run the process group, and with it gloo's
threads, are gone before the interpreter exits. In-process, on a one-rank gloo group; the two-rank runs of
test_rank_alignment.py, test_ddp.py and the ZeRO-3 tests check the same after their real teardown."""

import gc
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainers.teardown import end_distributed, gloo_threads


@pytest.fixture
def ddp_on_one_rank(tmp_path):
    """A trained step of a DistributedDataParallel wrapper on a one-rank gloo group; yields ([the wrapper], how many
    gloo threads ran before the group). The test pops the wrapper: this fixture keeps no reference to it."""
    gc.collect()
    before = gloo_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    holder = [DistributedDataParallel(torch.nn.Linear(4, 2))]
    holder[0](torch.ones(3, 4)).sum().backward()
    assert gloo_threads() > before
    yield holder, before
    holder.clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def test_without_a_process_group_it_does_nothing():
    assert not dist.is_initialized()
    end_distributed()
    assert not dist.is_initialized()


def test_destroy_process_group_leaves_gloo_threads_while_a_wrapper_holds_the_group(ddp_on_one_rank):
    """The cause: the wrapper's reducer keeps the group, so its threads outlive `destroy_process_group()` and end
    only when the interpreter's final garbage collection frees the wrapper."""
    holder, before = ddp_on_one_rank
    ddp = holder.pop()
    dist.destroy_process_group()
    assert gloo_threads() > before
    del ddp
    gc.collect()
    assert gloo_threads() == before


def test_end_distributed_joins_gloo_threads_once_the_wrapper_is_dropped(ddp_on_one_rank):
    holder, before = ddp_on_one_rank
    holder.clear()
    end_distributed()
    assert not dist.is_initialized()
    assert gloo_threads() == before


_DEEPSPEED_IMPORTED_AFTER_THE_GROUP = """
import sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
import deepspeed.comm.torch  # as transformers imports it in a DDP run: lazily, after the group exists
from trainers.teardown import end_distributed, gloo_threads
end_distributed()
print("gloo threads:", gloo_threads())
"""


def test_end_distributed_releases_the_group_deepspeed_binds_as_a_default_argument(tmp_path):
    """DeepSpeed's `TorchBackend.barrier(group=GroupMember.WORLD)` keeps the group from its import on: a trained DDP
    run's three gloo threads outlived `end_distributed` until this was released. A fresh process: the default is
    evaluated at import."""
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", _DEEPSPEED_IMPORTED_AFTER_THE_GROUP, str(tmp_path / "store")], cwd=repository,
        env={**os.environ, "PYTHONPATH": repository, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "gloo threads: 0", result.stdout


def test_repeat_multi_rank_fails_on_an_abort_message_in_a_passing_run(tmp_path):
    """`make repeat-multi-rank` (tests/repeat_multi_rank.py) counts a run that passed but printed an abort message
    (as a rank's `std::terminate` after a finished run does) as failed, and exits 1 on it; clean runs exit 0."""
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        from repeat_multi_rank import main
    finally:
        sys.path.pop(0)
    clean, aborting = tmp_path / "test_clean.py", tmp_path / "test_aborting.py"
    clean.write_text("def test_it():\n    pass\n")
    aborting.write_text(  # the message after the run, as from a thread at interpreter exit; pytest still exits 0
        "import atexit, os\n"
        "atexit.register(os.write, 2, b'terminate called without an active exception\\n')\n"
        "def test_it():\n    pass\n"
    )
    logs = tmp_path / "logs"
    assert main(["--rounds", "2", "--log-dir", str(logs), str(clean)]) == 0
    assert len(list(logs.glob("round0*_test_clean.log"))) == 2
    assert main(["--rounds", "2", "--log-dir", str(logs), str(aborting)]) == 1
    assert len(list(logs.glob("round0*_test_aborting.log"))) == 1  # stops after the round with a failure
