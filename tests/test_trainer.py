"""PartTrainer: every preset end to end, trainable sets per stage, frozen weights untouched, resume after a crash
and after SIGKILL, atomic checkpoints, the final artefacts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq, HfArgumentParser

from trainers import PRESETS, PartTrainingArguments, Schedule, Stage, load_schedule
from trainers.callbacks import PartStageCallback

from part_fixtures import tiny_trainer


class RecordStages(PartStageCallback):
    """Records, per stage, the trainable parameter names and the frozen parameters before and after."""

    def __init__(self):
        self.records = []

    def on_stage_begin(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.records.append({"stage": stage, "trainable": trainable, "frozen_before": frozen})

    def on_stage_end(self, args, state, control, *, model, stage, stage_index, stage_dir, **kwargs):
        params = dict(model.named_parameters())
        self.records[-1]["frozen_after"] = {n: params[n].detach().clone() for n in self.records[-1]["frozen_before"]}
        self.records[-1]["changed"] = {
            n for n, p in params.items() if n in self.records[-1]["trainable"]
        }


def _expected_trainable(model, stage):
    groups = model.get_parameter_groups(stage.encoder_last_k)
    return {n for g in stage.trainable for n in groups[g]}


@pytest.mark.parametrize("schedule", PRESETS)
def test_preset_runs_end_to_end_with_planned_trainable_sets(tmp_path, schedule):
    # A heavy mt weight makes whole text-only batches likely wherever a preset feeds mt: such a batch must reach a
    # trainable LLM group (the no-LoRA ablations once fed mt to a stage without one, and crashed).
    recorder = RecordStages()
    trainer = tiny_trainer(tmp_path, schedule=schedule, max_steps=12, callbacks=[recorder], save_steps=100, mt_weight=8.0)
    trainer.train()
    model = trainer.model
    plan = load_schedule(schedule, mt_weight=8.0)
    assert [r["stage"].name for r in recorder.records] == [s.name for s in plan.stages]
    for record in recorder.records:
        stage = record["stage"]
        assert record["trainable"] == _expected_trainable(model, stage), stage.name
        if "llm_lora" in stage.trainable:
            assert any(".lora_" in n for n in record["trainable"])
        assert not any(n.startswith("language_model.") and ".lora_" not in n for n in record["trainable"])
        for name, before in record["frozen_before"].items():
            assert torch.equal(before, record["frozen_after"][name]), f"{stage.name}: frozen {name} changed"
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [s.name for s in plan.stages]
    assert [s["global_step"] for s in summary["stages"]] == [s.num_steps(12) for s in plan.stages]
    assert all(s["last_loss"] is not None for s in summary["stages"])
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path)
    assert not loaded.has_lora  # the final model has LoRA merged
    assert (tmp_path / "processor_config.json").exists()


def test_encoder_last_k_stage_trains_only_top_layers(tmp_path):
    schedule = Schedule(
        "custom",
        [
            Stage("top", ["adapter", "encoder_last_k"], {"asr": 1.0}, steps=2, encoder_last_k=1),
            Stage("all", ["adapter", "encoder"], {"asr": 1.0, "s2tt": 1.0}, steps=1, unfreeze_at={}),
        ],
    )
    schedule.save(tmp_path / "schedule.yaml")
    recorder = RecordStages()
    trainer = tiny_trainer(tmp_path / "run", schedule=str(tmp_path / "schedule.yaml"), callbacks=[recorder])
    trainer.train()
    top = recorder.records[0]["trainable"]
    assert any(n.startswith("audio_tower.layers.2.") for n in top)
    assert not any(n.startswith(("audio_tower.layers.0.", "audio_tower.layers.1.")) for n in top)
    assert not recorder.records[0]["frozen_before"]["audio_tower.layers.0.mlp.fc1.weight"].requires_grad


def test_progressive_unfreezing_inside_a_stage(tmp_path):
    schedule = Schedule("inside", [Stage("s", ["adapter"], {"asr": 1.0}, steps=4, unfreeze_at={2: ["encoder"]})])
    trainer = tiny_trainer(tmp_path, schedule=schedule, save_steps=100)
    before = trainer.model.audio_tower.layers[0].mlp.fc1.weight.detach().clone()
    trainer.train()
    assert trainer.model.audio_tower.layers[0].mlp.fc1.weight.requires_grad
    assert not torch.equal(before, trainer.model.audio_tower.layers[0].mlp.fc1.weight)


def test_unfreezing_inside_a_stage_under_ddp_needs_find_unused_parameters(tmp_path, monkeypatch):
    """Under DDP the later groups sit in the reducer without gradients until their step (tests/test_ddp.py runs
    the working case on two ranks); without find_unused_parameters the reducer would wait for them forever."""
    schedule = Schedule("inside", [Stage("s", ["adapter"], {"asr": 1.0}, steps=2, unfreeze_at={1: ["encoder"]})])
    trainer = tiny_trainer(tmp_path, schedule=schedule, ddp_find_unused_parameters=False)
    monkeypatch.setattr(trainer, "_uses_ddp", lambda: True)  # as with several processes
    with pytest.raises(ValueError, match="needs find_unused_parameters=True"):
        trainer.train()
    assert not trainer.model.audio_tower.layers[0].mlp.fc1.weight.requires_grad


def test_resume_past_an_unfreeze_step_unfreezes(tmp_path):
    schedule = Schedule("inside", [Stage("s", ["adapter"], {"asr": 1.0}, steps=4, unfreeze_at={1: ["encoder"]})])
    tiny_trainer(tmp_path / "full", schedule=schedule).train()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(tmp_path / "crashed", schedule=schedule, callbacks=[CrashAt(0, 3)]).train()
    trainer = tiny_trainer(tmp_path / "crashed", schedule=schedule)
    trainer.train(resume_from_checkpoint=True)  # from checkpoint-2, past the unfreeze step
    assert trainer.model.audio_tower.layers[0].mlp.fc1.weight.requires_grad, "resumed past unfreeze_at: still frozen"
    assert _losses(tmp_path / "crashed") == _losses(tmp_path / "full")


def test_schedule_round_trip_and_errors(tmp_path):
    schedule = load_schedule("part")
    schedule.save(tmp_path / "s.json")
    assert Schedule.load(tmp_path / "s.json").to_dict() == schedule.to_dict()
    assert [s.trainable for s in schedule.stages] == [
        ["adapter"], ["adapter", "encoder_last_k"], ["adapter", "encoder"], ["adapter", "encoder", "llm_lora"]
    ]
    assert schedule.stages[-1].tasks["mt"] == 0.25
    with pytest.raises(ValueError, match="unknown parameter group"):
        Stage("x", ["decoder"], {"asr": 1.0}, steps=1)
    with pytest.raises(ValueError, match="exactly one positive length"):
        Stage("x", ["adapter"], {"asr": 1.0}, steps=1, fraction=0.5)
    with pytest.raises(ValueError, match="Unknown schedule preset"):
        load_schedule("nope")
    with pytest.raises(ValueError, match="text-only tasks \\['mt'\\] need a trainable LLM group"):
        Stage("x", ["adapter", "encoder"], {"asr": 1.0, "mt": 1.0}, steps=1)
    for name in ("no_task_staging_no_lora", "no_task_staging_no_lora_no_progressive", "baseline_2stage"):
        assert all("mt" not in stage.tasks for stage in load_schedule(name).stages), name


def test_arguments_parse_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(PartTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--schedule", "baseline_2stage", "--mixture_temperature", "2.0",
         "--lora_r", "8", "--max_steps", "10"]
    )
    assert args.schedule == "baseline_2stage" and args.mixture_temperature == 2.0 and args.lora_r == 8
    assert args.remove_unused_columns is False
    assert args.accelerator_config.dispatch_batches is False  # each rank collates its own share of the mixture


class CrashAt(PartStageCallback):
    def __init__(self, stage_index, step):
        self.stage_index, self.step, self.current = stage_index, step, None

    def on_stage_begin(self, args, state, control, *, stage_index, **kwargs):
        self.current = stage_index

    def on_step_end(self, args, state, control, **kwargs):
        if self.current == self.stage_index and state.global_step == self.step:
            raise RuntimeError("simulated crash")


def _losses(folder):
    summary = json.loads((folder / "training_summary.json").read_text())
    return {name: [round(e["loss"], 5) for e in entries] for name, entries in summary["losses"].items()}


def test_resume_mid_stage_reproduces_uninterrupted_losses(tmp_path):
    tiny_trainer(tmp_path / "full", max_steps=20).train()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(tmp_path / "crashed", max_steps=20, callbacks=[CrashAt(1, 3)]).train()
    assert (tmp_path / "crashed" / "stage-1-2a_encoder_top" / "checkpoint-2").is_dir()
    tiny_trainer(tmp_path / "crashed", max_steps=20).train(resume_from_checkpoint=True)
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "crashed")
    assert resumed["2a_encoder_top"][-1:] == full["2a_encoder_top"][-1:]
    assert resumed == full


def test_resume_between_stages_loads_the_finished_stage(tmp_path):
    tiny_trainer(tmp_path / "full", max_steps=20).train()
    with pytest.raises(RuntimeError):
        tiny_trainer(tmp_path / "crashed", max_steps=20, save_steps=100, callbacks=[CrashAt(2, 1)]).train()
    tiny_trainer(tmp_path / "crashed", max_steps=20, save_steps=100).train(resume_from_checkpoint=True)
    assert _losses(tmp_path / "crashed") == _losses(tmp_path / "full")


_SIGKILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from part_fixtures import tiny_trainer
trainer = tiny_trainer(sys.argv[1], max_steps=24, save_steps=1)
trainer.train(resume_from_checkpoint=len(sys.argv) > 2)
"""


@pytest.mark.slow
def test_sigkill_during_training_resumes_from_last_complete_checkpoint(tmp_path):
    script = _SIGKILL_SCRIPT.format(tests=os.path.dirname(__file__))
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    stage_dir = run / "stage-1-2a_encoder_top"
    deadline = time.time() + 240
    while time.time() < deadline and not (stage_dir / "checkpoint-2").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (stage_dir / "checkpoint-2").is_dir(), "training did not reach the second stage in time"
    # Every checkpoint that looks complete is complete: staging leftovers never carry the final name.
    for checkpoint in stage_dir.glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "model.safetensors").exists()
    result = subprocess.run([sys.executable, "-c", script, str(run), "resume"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]][-1] == "3_cross_language"
    assert AutoModelForSpeechSeq2Seq.from_pretrained(run) is not None


def test_evaluate_generation_scores_per_language_and_direction(tmp_path):
    from part_fixtures import tiny_components

    trainer = tiny_trainer(tmp_path, schedule=Schedule("one", [Stage("s", ["adapter"], {"asr": 1.0}, steps=1)]))
    trainer.train()
    components = tiny_components(num_samples=2)
    samples = []
    for component in components:
        for row in component.dataset:
            samples.append({**row, "task": component.task, "source_language": component.source_language,
                            "target_language": component.target_language})
    metrics, predictions = trainer.evaluate_generation(samples, max_new_tokens=4)
    assert len(predictions) == len(samples) and all(isinstance(p, str) for p in predictions)
    assert {"test_wer_en", "test_wer_de", "test_bleu_de-en", "test_mt_bleu_de-en", "test_asr_avg_error"} <= set(metrics)
    assert trainer.state.log_history[-1]["test_wer_en"] == metrics["test_wer_en"]


class CrashAtStageEnd(PartStageCallback):
    """Crashes after a stage's last checkpoint was written but before the stage is marked complete."""

    def __init__(self, stage_index):
        self.stage_index, self.current = stage_index, None

    def on_stage_begin(self, args, state, control, *, stage_index, **kwargs):
        self.current = stage_index

    def on_train_end(self, args, state, control, **kwargs):
        if self.current == self.stage_index:
            raise RuntimeError("simulated crash at the stage end")


def test_resume_from_a_stages_last_checkpoint_does_not_train_on(tmp_path):
    tiny_trainer(tmp_path / "full", max_steps=20).train()
    with pytest.raises(RuntimeError, match="stage end"):
        tiny_trainer(tmp_path / "crashed", max_steps=20, callbacks=[CrashAtStageEnd(1)]).train()
    stage_dir = tmp_path / "crashed" / "stage-1-2a_encoder_top"
    assert (stage_dir / "checkpoint-4").is_dir() and not (stage_dir / "stage_complete.json").exists()
    tiny_trainer(tmp_path / "crashed", max_steps=20).train(resume_from_checkpoint=True)
    assert not (stage_dir / "checkpoint-5").exists()
    summary = json.loads((tmp_path / "crashed" / "training_summary.json").read_text())
    assert summary["stages"][1]["global_step"] == 4
    assert _losses(tmp_path / "crashed") == _losses(tmp_path / "full")
