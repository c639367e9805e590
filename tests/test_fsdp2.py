"""PartTrainer under FSDP2: two CPU ranks (gloo, `torch.distributed.run`) train the `part` preset on a tiny model
through all four stages with the Trainer's `fsdp` + `fsdp_config` from `examples/configs/fsdp2.json` (version 2:
accelerate's `fully_shard` path; `tests/fsdp2_run.py`), and again under plain DDP as the unsharded reference (same
seeds, same batches).

Checked: at every stage end the gathered parameters are identical on both ranks, every trained group moved and the
frozen parameters did not, each rank holds half of every parameter (frozen ones included) and every encoder, adapter
and LLM layer is an FSDP unit of its own; LoRA is switched on from the cross-language stage; the final save is a
plain checkpoint (the model's own code and `auto_map`, the tied LM head stored once) that
`PartForSpeechToText.from_pretrained` loads and that generates what the DDP run's final model generates; resuming
mid-stage (the Trainer's FSDP checkpoint) reproduces the uninterrupted run; a schedule that unfreezes the encoder
inside its second stage trains in bf16 mixed precision; settings PartTrainer cannot honour are refused. Three
launches, about 2 minutes of CPU time.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_audio
from part_fixtures import assert_trained_groups_moved, run_two_ranks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # a hang (ranks out of step in a collective) must fail the test, not stall the suite
UNIT_CLASSES = ("FunAsrNanoEncoderLayer", "PartAdapterLayer", "Qwen2DecoderLayer")  # the model's _no_split_modules


def launch(output_dir, *options):
    """Runs tests/fsdp2_run.py on two CPU ranks; returns the two ranks' records."""
    run_two_ranks("fsdp2_run.py", str(output_dir), *options, timeout=TIMEOUT)
    ranks = [json.loads((output_dir / f"fsdp2_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fsdp2")
    return output_dir, launch(output_dir)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("ddp_reference")
    return output_dir, launch(output_dir, "--ddp")


@pytest.mark.slow
def test_every_stage_trains_its_groups_on_identical_ranks(fsdp2_run):
    _, (first, second) = fsdp2_run
    _check_stages(first, second, "part")
    assert first["batches"]["all"] == second["batches"]["all"] == 2 + 2 + 2 + 3  # the stages' steps (max_steps 8)
    # the last stage mixes text-only MT in: a rank with a text-only batch still runs the audio path (dummy clip)
    assert first["batches"]["text_only"] + second["batches"]["text_only"] >= 1


def _check_stages(first, second, label):
    """Per stage: the gathered parameters are identical on both ranks, every trained group moved, nothing frozen
    moved, and LoRA is on exactly when the stage trains it."""
    stages = first["schedule"]["stages"]
    assert list(first["stages"]) == list(second["stages"]) == [s["name"] for s in stages]
    for stage in stages:
        mine, theirs = first["stages"][stage["name"]], second["stages"][stage["name"]]
        where = f"{label}/{stage['name']}"
        assert mine["wrapper"] == "FSDPPartForSpeechToText"
        differing = sorted(n for n in mine["end"] if mine["end"][n] != theirs["end"][n])
        assert not differing, f"{where}: parameters differ between the ranks: {differing[:3]}"
        assert_trained_groups_moved(mine, theirs, stage, where)
        assert mine["lora_on"] == theirs["lora_on"] == ("llm_lora" in stage["trainable"]), where


@pytest.mark.slow
def test_bf16_mixed_precision_trains_units_that_were_frozen_at_their_first_forward(fsdp2_run):
    """The encoder layers are frozen at their first forward (adapter stage), when FSDP2 works out a unit's
    mixed-precision dtypes; stage 2 unfreezes them at its second step (before the fix: bf16 gradients for fp32
    parameters, a RuntimeError at that step's backward, and the launch failed)."""
    _, (first, second) = fsdp2_run
    _check_stages(first["bf16"], second["bf16"], "bf16")
    assert first["bf16"]["batches"]["all"] == 2 + 3
    assert first["bf16"]["dtypes"] == ["torch.float32"]  # fp32 master weights, bf16 compute


@pytest.mark.slow
def test_each_rank_holds_half_of_every_parameter_in_units_per_layer(fsdp2_run):
    from modeling_part.tiny import build_tiny_part

    _, ranks = fsdp2_run
    model, _ = build_tiny_part("sensevoice", encoder_layers=3)  # as part_fixtures.tiny_trainer builds it
    for rank in ranks:
        for name, stage in rank["stages"].items():
            share = stage["share"]
            assert share["sharded_parameters"] == share["parameters"], f"{name}: a parameter is not sharded"
            assert abs(share["local"] / share["total"] - 0.5) <= 0.02, f"rank {rank['rank']}, {name}: {share}"
        units = rank["units"]
        assert units["<root>"] == "PartForSpeechToText"
        for layer_class in UNIT_CLASSES:
            layers = {n for n, m in model.named_modules() if type(m).__name__ == layer_class}
            assert layers and layers == {n for n, c in units.items() if c == layer_class}, (layer_class, units)


@pytest.mark.slow
def test_fsdp_settings_partrainer_cannot_honour_are_refused(fsdp2_run, ddp_run):
    """On CPU ranks accelerate does not turn FSDP on (GPUs/accelerators only): the run would silently be DDP. With a
    sharded state dict type the Trainer's `save_model` writes no weights: no stage models and no final model."""
    for rank in ddp_run[1]:
        assert "--fsdp is set but accelerate did not turn FSDP on" in (rank["refused"]["cpu"] or "")
    for rank in fsdp2_run[1]:
        assert 'set "state_dict_type": "FULL_STATE_DICT"' in (rank["refused"]["sharded"] or "")


def test_example_scripts_take_the_fsdp2_config(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "examples"))
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it: restored after
    from speech_text_utils import DataTrainingArguments, parse_arguments

    _, _, args = parse_arguments(DataTrainingArguments, [
        "--model_name_or_path", "unused", "--output_dir", "unused", "--use_cpu",
        "--fsdp", "--fsdp_config", os.path.join(REPO, "examples", "configs", "fsdp2.json"),
    ])
    assert args.fsdp is True
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and plugin["state_dict_type"] == "FULL_STATE_DICT"


def _generate(model_dir, processor):
    from modeling_part import PartForSpeechToText

    model = PartForSpeechToText.from_pretrained(model_dir).eval()
    assert not model.has_lora and not any(".lora_" in n for n, _ in model.named_parameters())
    prompts = [
        processor(audio=make_audio(0.9, seed=3), sampling_rate=16000, task="asr", source_language="en"),
        processor(audio=make_audio(1.3, seed=4), sampling_rate=16000, task="s2tt", source_language="de",
                  target_language="en"),
        processor(task="mt", source_language="de", target_language="en", text="zwei drei vier"),
    ]
    with torch.no_grad():
        return [model.generate(**p, do_sample=False, max_new_tokens=8).tolist() for p in prompts]


@pytest.mark.slow
def test_final_model_loads_and_generates_as_the_unsharded_run(fsdp2_run, ddp_run):
    from modeling_part import PartProcessor

    sharded_dir, _ = fsdp2_run
    reference_dir, _ = ddp_run
    config = json.loads((sharded_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSpeechSeq2Seq"] == "modeling_part.PartForSpeechToText"
    assert (sharded_dir / "modeling_part.py").is_file() and not list(sharded_dir.glob("_fsdp*.py"))
    sharded, reference = (load_file(str(d / "model.safetensors")) for d in (sharded_dir, reference_dir))
    assert sharded.keys() == reference.keys()  # the tied LM head once, LoRA merged
    # The ranks reduce gradients in another order (reduce-scatter vs all-reduce), and the DDP reference takes the
    # sparse lookup gradient of the tied embedding where FSDP2's sharded one stays dense: the same sums in another
    # order, last bits that Adam's normalisation carries over the schedule's steps (seen: at most 5e-5).
    for key in sharded:
        torch.testing.assert_close(sharded[key], reference[key], rtol=0, atol=2e-4, msg=key)
    losses = [json.loads((d / "training_summary.json").read_text())["losses"] for d in (sharded_dir, reference_dir)]
    assert losses[0].keys() == losses[1].keys()
    for stage in losses[0]:
        assert [e["loss"] for e in losses[0][stage]] == pytest.approx([e["loss"] for e in losses[1][stage]], rel=1e-6)
    processor = PartProcessor.from_pretrained(sharded_dir)
    assert _generate(sharded_dir, processor) == _generate(reference_dir, processor)


def _step_losses(output_dir):
    summary = json.loads((output_dir / "training_summary.json").read_text())
    return {name: [(e["step"], e["loss"]) for e in entries] for name, entries in summary["losses"].items()}


@pytest.mark.slow
def test_resume_mid_stage_reproduces_the_run(fsdp2_run, tmp_path):
    """The last stage's newest checkpoint is lost: the stage resumes from its FSDP checkpoint (full model and
    optimizer state, loaded into the sharded model) in a new process."""
    output_dir, _ = fsdp2_run
    resumed = tmp_path / "run"
    shutil.copytree(output_dir, resumed, ignore=shutil.ignore_patterns("fsdp2_rank*.json"))
    last_stage = sorted(resumed.glob("stage-3-*"))[0]
    for name in ("checkpoint-3", "stage_model", "stage_complete.json"):
        path = last_stage / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert (last_stage / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    for name in ("model.safetensors", "training_summary.json"):
        (resumed / name).unlink()

    ranks = launch(resumed, "--resume")
    assert all(r["resumed"] for r in ranks)
    assert [r["batches"]["all"] for r in ranks] == [1, 1]
    assert _step_losses(resumed) == _step_losses(output_dir)
    full, again = load_file(str(output_dir / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert full.keys() == again.keys()
    assert all(torch.equal(full[k], again[k]) for k in full)
