"""AudioPathOnEveryRank: a rank with a text-only batch still runs the audio path (a silent clip, times zero), so
multi-rank collectives stay aligned; the model's forward holds no distributed logic. In-process checks of the hooks,
and two DDP ranks (gloo) where one rank trains on a text-only batch with every parameter required to get a gradient
(`find_unused_parameters=False`)."""

import os
import textwrap

import pytest
import torch

from trainers import rank_alignment
from trainers.freeze import set_trainable
from trainers.rank_alignment import AudioPathOnEveryRank

from conftest import make_audio
from part_fixtures import run_two_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _text_only_batch(processor, with_targets=True):
    return processor(task="mt", source_language="de", target_language="en", text=["zwei Hunde"],
                     target_text=["two dogs"] if with_targets else None)


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def test_text_only_batch_runs_the_audio_path_times_zero(tiny_part, monkeypatch):
    model, processor = tiny_part
    set_trainable(model, ["adapter", "encoder"])
    batch = _text_only_batch(processor)
    expected = model(**batch).loss

    monkeypatch.setattr(rank_alignment, "audio_path_needed", lambda model: True)  # as on one of several ranks
    handles = AudioPathOnEveryRank(processor).attach(model)
    calls, counter = _count_calls(model.audio_tower)
    try:
        loss = model(**batch).loss
        loss.backward()
        torch.testing.assert_close(loss, expected)
        assert len(calls) == 1
        for name, parameter in [*model.audio_tower.named_parameters(), *model.adapter.named_parameters()]:
            assert parameter.grad is not None and not parameter.grad.any(), name  # present, and zero

        calls.clear()  # a batch with audio runs its own audio path only
        audio_batch = processor(audio=make_audio(1.0), sampling_rate=16000, task="asr", source_language="en",
                                target_text="one")
        model(**audio_batch)
        assert len(calls) == 1

        calls.clear()  # generation: the silent clip on the first step only, none while decoding
        with torch.no_grad():
            tokens = model.generate(**_text_only_batch(processor, with_targets=False), max_new_tokens=3,
                                    min_new_tokens=3)
        assert tokens.shape[1] == 3 and len(calls) == 1
    finally:
        counter.remove()
        for handle in handles:
            handle.remove()


def test_single_process_runs_no_extra_audio_path(tiny_part):
    model, processor = tiny_part
    handles = AudioPathOnEveryRank(processor).attach(model)
    calls, counter = _count_calls(model.audio_tower)
    try:
        model(**_text_only_batch(processor))
    finally:
        counter.remove()
        for handle in handles:
            handle.remove()
    assert not calls


_DDP_RUN = """
import os, sys
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
import torch
import torch.distributed as dist
from conftest import make_audio
from modeling_part.tiny import build_tiny_part
from trainers.freeze import set_trainable
from trainers.rank_alignment import AudioPathOnEveryRank

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model, processor = build_tiny_part("sensevoice")
set_trainable(model, ["adapter", "encoder", "llm"])
if sys.argv[2] == "hooks":
    AudioPathOnEveryRank(processor).attach(model)
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(2):
    if rank == 0:
        batch = processor(audio=make_audio(1.0, seed=step), sampling_rate=16000, task="asr", source_language="en",
                          target_text="one")
    else:  # a text-only batch on this rank
        batch = processor(task="mt", source_language="de", target_language="en", text="zwei", target_text="two")
    ddp(**batch).loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.audio_tower.parameters()])
    gathered = [torch.zeros_like(grads) for _ in range(2)]
    dist.all_gather(gathered, grads)
    assert torch.equal(gathered[0], gathered[1]) and grads.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
print(f"rank {rank}: DDP steps done")
del ddp, optimizer  # the wrapper's reducer holds the process group
from trainers.teardown import end_distributed
from part_fixtures import report_gloo_threads
end_distributed()
report_gloo_threads()
"""


@pytest.mark.slow
def test_ddp_rank_with_text_only_batch_stays_in_step(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(_DDP_RUN))
    stdout, _ = run_two_ranks(str(script), REPO, "hooks", timeout=240)
    assert stdout.count("DDP steps done") == 2
