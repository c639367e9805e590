"""PartTrainer under plain DistributedDataParallel: two CPU ranks (gloo, `torch.distributed.run`, no DeepSpeed) train
every preset through all its stages, a schedule that unfreezes the encoder inside a stage, and `baseline_2stage` in
bf16 (`tests/ddp_run.py`).

Checked at every stage end: every parameter is bitwise identical on both ranks (the ranks read different batches,
so this holds only if every trained parameter's gradient was all-reduced), every trained group moved during the
stage and frozen parameters did not, and the stage trained through one DistributedDataParallel wrapper, the only
one alive (the earlier stages' were released). In bf16 the model's forward is wrapped for autocast once, not once
per stage. About a minute on 2 CPU cores.
"""

import json

import pytest

from part_fixtures import assert_trained_groups_moved, run_two_ranks
from trainers import PRESETS

TIMEOUT = 300  # a hang (ranks out of step in a collective) must fail the test, not stall the suite
SCHEDULES = [*PRESETS, "unfreeze_inside", "baseline_2stage_bf16"]  # as in ddp_run.py


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    """Runs tests/ddp_run.py on two CPU ranks; returns the two ranks' records."""
    output_dir = tmp_path_factory.mktemp("ddp")
    run_two_ranks("ddp_run.py", str(output_dir), timeout=TIMEOUT)
    ranks = [json.loads((output_dir / f"ddp_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ranks_stay_identical_and_trained_groups_move_at_every_stage_end(ddp_ranks, schedule):
    first, second = (rank["schedules"][schedule] for rank in ddp_ranks)
    stages = first["schedule"]["stages"]
    assert list(first["stages"]) == list(second["stages"]) == [s["name"] for s in stages]
    assert first["batches"]["all"] == second["batches"]["all"] > 0
    for stage in stages:
        mine, theirs = first["stages"][stage["name"]], second["stages"][stage["name"]]
        differing = sorted(n for n in mine["end"] if mine["end"][n] != theirs["end"][n])
        assert not differing, (
            f"{schedule}/{stage['name']}: {len(differing)} of {len(mine['end'])} parameters differ between the ranks "
            f"at the stage end (gradients not all-reduced), e.g. {differing[:3]}"
        )
        assert mine["wrapper"] == "DistributedDataParallel"
        assert mine["live_ddp_wrappers"] == theirs["live_ddp_wrappers"] == 1, "an earlier stage's wrapper is alive"
        assert_trained_groups_moved(mine, theirs, stage, f"{schedule}/{stage['name']}")


@pytest.mark.slow
def test_mixed_precision_wraps_the_forward_once(ddp_ranks):
    for rank in ddp_ranks:
        depths = [s["forward_wrappers"] for s in rank["schedules"]["baseline_2stage_bf16"]["stages"].values()]
        plain = [s["forward_wrappers"] for s in rank["schedules"]["baseline_2stage"]["stages"].values()]
        assert depths[0] > plain[0], "bf16 did not wrap the forward for autocast"
        assert depths == [depths[0]] * len(depths), f"the forward is wrapped again in each stage: {depths}"


@pytest.mark.slow
def test_a_rank_with_a_text_only_batch_kept_in_step(ddp_ranks):
    """The LoRA stages feed text-only MT, so some step had a rank without audio beside one with audio (and the run
    finished with identical parameters: the text-only rank joined the audio tower's reduction)."""
    lora_schedules = ("part", "no_task_staging")
    text_only = sum(rank["schedules"][s]["batches"]["text_only"] for rank in ddp_ranks for s in lora_schedules)
    assert text_only >= 1
