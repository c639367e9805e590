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
from transformers import AutoModelForSpeechSeq2Seq, HfArgumentParser, TrainerCallback

from trainers import PRESETS, PartTrainingArguments, Schedule, Stage, load_schedule
from trainers.callbacks import PartStageCallback
from trainers.freeze import parameter_groups

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


class RecordFrozenModesInTraining(TrainerCallback):
    """Records the modules left in training mode although all their parameters are frozen, after every step."""

    def __init__(self):
        self.frozen_in_training_mode = set()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, module in model.named_modules():
            parameters = list(module.parameters())
            if module.training and parameters and not any(p.requires_grad for p in parameters):
                self.frozen_in_training_mode.add(name)


def test_frozen_modules_stay_in_eval_mode_while_training(tmp_path):
    recorder = RecordFrozenModesInTraining()
    tiny_trainer(tmp_path, max_steps=4, callbacks=[recorder], save_steps=100).train()
    assert not recorder.frozen_in_training_mode


def _expected_trainable(model, stage):
    groups = parameter_groups(model, stage.encoder_last_k)
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


def test_lora_stays_frozen_in_a_later_stage_that_does_not_train_it(tmp_path):
    """After the LoRA stage, LoRA stays enabled (the LLM keeps what it learnt) but a stage that does not list
    `llm_lora` must not train it: enabling LoRA (peft switches its requires_grad on) must not undo the freeze plan."""
    schedule = Schedule("after_lora", [
        Stage("lora", ["adapter", "llm_lora"], {"asr": 1.0, "mt": 1.0}, steps=2),
        Stage("adapter_only", ["adapter"], {"asr": 1.0}, steps=2),
        Stage("lora_again", ["llm_lora"], {"mt": 1.0}, steps=1),
    ])
    recorder = RecordStages()
    trainer = tiny_trainer(tmp_path, schedule=schedule, save_steps=100, callbacks=[recorder])
    trainer.train()
    lora_names = set(parameter_groups(trainer.model)["llm_lora"])
    assert lora_names
    first, later, again = recorder.records
    assert lora_names <= first["trainable"] and lora_names <= again["trainable"]
    assert not lora_names & later["trainable"], "LoRA requires grad in a stage that does not train it"
    assert later["trainable"] == _expected_trainable(trainer.model, later["stage"])
    assert any(later["frozen_before"][n].abs().sum() > 0 for n in lora_names if ".lora_B." in n)  # LoRA trained
    for name in lora_names:
        assert torch.equal(later["frozen_before"][name], later["frozen_after"][name]), f"frozen LoRA {name} changed"


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


def _logged_learning_rates(folder):
    summary = json.loads((folder / "training_summary.json").read_text())
    return {name: [e["learning_rate"] for e in entries] for name, entries in summary["losses"].items()}


def test_peak_learning_rate_of_every_stage_follows_the_learning_rate_argument(tmp_path, caplog):
    scales = {"1_adapter": 1.0, "2a_encoder_top": 0.3, "2b_encoder_full": 0.2, "3_cross_language": 0.2}  # `part`
    peaks = {}
    for learning_rate in (1e-4, 1e-3):
        folder = tmp_path / str(learning_rate)
        with caplog.at_level("WARNING"):
            tiny_trainer(folder, max_steps=8, save_steps=100, learning_rate=learning_rate).train()
        logged = _logged_learning_rates(folder)
        assert list(logged) == list(scales)
        peaks[learning_rate] = {name: max(rates) for name, rates in logged.items()}
        for name, scale in scales.items():
            assert peaks[learning_rate][name] == pytest.approx(learning_rate * scale, rel=1e-9), (
                f"--learning_rate {learning_rate}: stage {name} peaked at {peaks[learning_rate][name]}, "
                f"not {scale} x {learning_rate}"
            )
    assert all(peaks[1e-3][name] == pytest.approx(10 * peaks[1e-4][name], rel=1e-9) for name in scales)
    assert "lr: 3e-05 (= --learning_rate 0.0001 x 0.3)" in caplog.text
    summary = json.loads((tmp_path / "0.0001" / "training_summary.json").read_text())
    assert [s["learning_rate"] for s in summary["stages"]] == pytest.approx([1e-4 * v for v in scales.values()])


@pytest.mark.parametrize("warmup", [1, 0.5])
def test_warmup_argument_sets_the_warmup_of_every_preset_stage(tmp_path, warmup):
    """--warmup_steps 1, or 0.5 of each stage's 2-3 steps rounded down: one warm-up step in every stage."""
    tiny_trainer(tmp_path, max_steps=8, save_steps=100, learning_rate=1e-3, warmup_steps=warmup).train()
    logged = _logged_learning_rates(tmp_path)
    # linear schedule, the rate logged at each step: 0 during the warm-up step, then the peak, decaying to 0
    expected = {"1_adapter": [0.0, 1e-3], "2a_encoder_top": [0.0, 3e-4], "2b_encoder_full": [0.0, 2e-4],
                "3_cross_language": [0.0, 2e-4, 1e-4]}
    assert list(logged) == list(expected)
    for name, rates in expected.items():
        assert logged[name] == pytest.approx(rates), f"--warmup_steps {warmup}: stage {name} logged {logged[name]}"


def test_a_stages_own_learning_rate_and_warmup_override_the_arguments(tmp_path, caplog):
    schedule = Schedule("warm", [
        Stage("run_warmup", ["adapter"], {"asr": 1.0}, steps=4),
        Stage("own_warmup", ["adapter"], {"asr": 1.0}, steps=4, warmup_steps=0, lr_scale=0.5),
        Stage("absolute", ["adapter"], {"asr": 1.0}, steps=2, learning_rate=1e-2, warmup_ratio=0.5),
    ])
    with caplog.at_level("WARNING"):
        tiny_trainer(tmp_path, schedule=schedule, save_steps=100, learning_rate=2e-3, warmup_steps=2).train()
    logged = _logged_learning_rates(tmp_path)
    # linear schedule, the rate logged at each step: warm-up from 0 over 2 steps, then linear decay to 0
    assert logged["run_warmup"] == pytest.approx([0.0, 1e-3, 2e-3, 1e-3])
    assert logged["own_warmup"] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert logged["absolute"] == pytest.approx([0.0, 1e-2])
    assert "warm-up: 2 steps (--warmup_steps 2)" in caplog.text
    assert "lr: 0.01 (the stage's own learning_rate; --learning_rate 0.002 unused)" in caplog.text


def test_stage_learning_rate_and_warmup_rules(tmp_path):
    stage = Stage("s", ["adapter"], {"asr": 1.0}, steps=10, lr_scale=0.3)
    assert stage.peak_learning_rate(1e-3)[0] == 3e-4
    assert stage.num_warmup_steps(250, 0.05) == (12, "= --warmup_steps 0.05 x 250 steps")  # rounded down
    assert stage.num_warmup_steps(250, 3)[0] == 3
    assert Stage("s", ["adapter"], {"asr": 1.0}, steps=10, warmup_ratio=0.5).num_warmup_steps(9, 3)[0] == 4
    # schedules saved before lr_scale existed name absolute rates and warm-up ratios: they keep them
    old = {"name": "old", "stages": [{"name": "s", "trainable": ["adapter"], "tasks": {"asr": 1.0}, "steps": 4,
                                      "learning_rate": 1e-3, "warmup_ratio": 0.05}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_schedule(str(tmp_path / "old.json")).stages[0]
    assert loaded.peak_learning_rate(1e-4)[0] == 1e-3 and loaded.num_warmup_steps(100, 10)[0] == 5
    schedule = Schedule("new", [stage, Stage("t", ["adapter"], {"asr": 1.0}, steps=2, warmup_steps=3)])
    for name in ("s.yaml", "s.json"):
        schedule.save(tmp_path / name)
        assert Schedule.load(tmp_path / name).to_dict() == schedule.to_dict()
    for wrong, message in [
        ({"learning_rate": 1e-3, "lr_scale": 0.5}, "not both"),
        ({"lr_scale": 0}, "lr_scale must be a positive number"),
        ({"learning_rate": -1.0}, "learning_rate must be positive"),
        ({"warmup_steps": 2, "warmup_ratio": 0.1}, "warmup_steps or warmup_ratio, not both"),
        ({"warmup_ratio": 1.5}, "in \\[0, 1\\]"),
        ({"warmup_steps": 2.5}, "whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            Stage("x", ["adapter"], {"asr": 1.0}, steps=1, **wrong)


def test_arguments_parse_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(PartTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--schedule", "baseline_2stage", "--mixture_temperature", "2.0",
         "--lora_r", "8", "--max_steps", "10"]
    )
    assert args.schedule == "baseline_2stage" and args.mixture_temperature == 2.0 and args.lora_r == 8
    assert args.remove_unused_columns is False
    assert (args.learning_rate, args.warmup_steps) == (1e-3, 0.05)  # the presets' paper rates, 5% warm-up per stage
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


def test_a_stage_without_data_is_refused_before_training(tmp_path):
    """The trainer checks the schedule against its data with the schedule's own check (one implementation)."""
    from trainers import PartTrainer, PartTrainingArguments

    from modeling_part.tiny import build_tiny_part
    from part_fixtures import tiny_components

    model, processor = build_tiny_part("sensevoice")
    args = PartTrainingArguments(output_dir=str(tmp_path), schedule="part", max_steps=4, report_to=[], use_cpu=True)
    only_mt = [c for c in tiny_components(2) if c.task == "mt"]
    with pytest.raises(ValueError, match=r"Stage '1_adapter' of schedule 'part' samples tasks \['asr'\].*mt_de_en"):
        PartTrainer(model=model, args=args, train_components=only_mt, processor=processor)


def test_stage_evaluation_scores_the_chosen_stages_once_in_order(tmp_path):
    from part_fixtures import tiny_components

    from trainers.callbacks import STAGE_METRICS_FILE, StageEvaluationCallback, read_stage_metrics

    samples = [
        {**row, "task": c.task, "source_language": c.source_language, "target_language": c.target_language}
        for c in tiny_components(num_samples=1) for row in c.dataset
    ]  # fmt: skip
    schedule = Schedule("three", [Stage(name, ["adapter"], {"asr": 1.0}, steps=1) for name in ("a", "b", "c")])
    callback = StageEvaluationCallback(samples, stages=["a", "c"], max_new_tokens=2)
    trainer = tiny_trainer(tmp_path, schedule=schedule, callbacks=[callback])
    trainer.train()
    stages = read_stage_metrics(tmp_path)
    assert list(stages) == ["a", "c"] and not (tmp_path / "stage-1-b" / STAGE_METRICS_FILE).exists()
    assert {"test_wer_en", "test_bleu_de-en", "test_mt_bleu_de-en"} <= set(stages["a"])
    # the metrics were logged by evaluate_generation, once per chosen stage
    assert sum("test_wer_en" in entry for entry in trainer.state.log_history) >= 1
    # a stage whose metrics are on disk (a resumed run) is not generated again
    (tmp_path / "stage-0-a" / STAGE_METRICS_FILE).write_text('{"stage": "a", "metrics": {"test_wer_en": -1.0}}')
    calls = []
    trainer.evaluate_generation = lambda *a, **k: calls.append(1) or ({}, [])
    callback.on_stage_end(trainer.args, trainer.state, trainer.control, stage=schedule.stages[0],
                          stage_dir=str(tmp_path / "stage-0-a"), trainer=trainer)  # fmt: skip
    assert not calls and read_stage_metrics(tmp_path)["a"] == {"test_wer_en": -1.0}
    with pytest.raises(ValueError, match="held-out samples"):
        StageEvaluationCallback([])


def test_stage_evaluation_does_not_change_what_the_run_trains(tmp_path):
    """Scoring after each stage draws no random numbers: with LoRA dropout in the last stage, a run with
    StageEvaluationCallback trains to the same weights as one without."""
    import torch

    from trainers.callbacks import StageEvaluationCallback

    weights = []
    for callbacks in ([], [StageEvaluationCallback(_eval_samples(), max_new_tokens=3)]):
        trainer = tiny_trainer(tmp_path / str(len(callbacks)), callbacks=callbacks, lora_dropout=0.2)
        trainer.train()
        weights.append(trainer.model.state_dict())
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def _eval_samples():
    from part_fixtures import tiny_components

    return [
        {**row, "task": c.task, "source_language": c.source_language, "target_language": c.target_language}
        for c in tiny_components(num_samples=1) if c.task == "asr" for row in c.dataset
    ]  # fmt: skip


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("save_total_limit", [1, 2])
def test_load_best_model_at_end_ends_every_stage_on_its_best_checkpoint(tmp_path, save_total_limit):
    """`load_best_model_at_end` applies per stage (each stage is one run of the Trainer's loop, with its own
    trainable set): a stage ends on its best checkpoint, which is recorded where it lives, kept by the checkpoint
    rotation, and is what the next stage starts from. Scripted scores put the best at step 2 of stage a and step 3
    of stage b, neither the last."""
    schedule = Schedule("best", [Stage("a", ["adapter"], {"asr": 1.0}, steps=4),
                                 Stage("b", ["adapter", "encoder"], {"asr": 1.0}, steps=4)])
    scores = {0: [3.0, 1.0, 2.0, 4.0], 1: [5.0, 6.0, 0.5, 7.0]}
    trainer = tiny_trainer(tmp_path, schedule=schedule, save_steps=1, eval_strategy="steps", eval_steps=1,
                           save_total_limit=save_total_limit, load_best_model_at_end=True,
                           metric_for_best_model="score", greater_is_better=False, per_device_eval_batch_size=2,
                           trainer_kwargs={"eval_dataset": _eval_samples()})
    trainer.compute_metrics = lambda _: {"score": scores[trainer.stage_index][trainer.state.global_step - 1]}
    trainer.train()
    for index, best, last in [(0, 2, 4), (1, 3, 4)]:
        stage_dir = tmp_path / f"stage-{index}-{schedule.stages[index].name}"
        kept = sorted(p.name for p in stage_dir.glob("checkpoint-*"))
        assert kept == sorted({f"checkpoint-{best}", f"checkpoint-{last}"} if save_total_limit == 2
                              else {f"checkpoint-{best}"}), kept
        assert not (stage_dir / ".incomplete").exists()
        best_weights = _weights(stage_dir / f"checkpoint-{best}")
        stage_weights = _weights(stage_dir / "stage_model")
        assert stage_weights.keys() == best_weights.keys()
        assert all(torch.equal(stage_weights[k], best_weights[k]) for k in best_weights), "stage did not end on its best"
        if save_total_limit == 2:
            last_weights = _weights(stage_dir / f"checkpoint-{last}")
            assert any(not torch.equal(stage_weights[k], last_weights[k]) for k in best_weights)
        summary = json.loads((stage_dir / "stage_complete.json").read_text())
        assert summary["best_model_checkpoint"] == str(stage_dir / f"checkpoint-{best}")
        assert summary["best_metric"] == min(scores[index])
        state = json.loads((stage_dir / f"checkpoint-{best}" / "trainer_state.json").read_text())
        assert state["best_model_checkpoint"] == str(stage_dir / f"checkpoint-{best}")


def test_a_stage_resumed_at_its_end_ends_on_its_best_checkpoint(tmp_path):
    """A crash after a stage's last checkpoint but before the stage is marked complete: the resumed run does not
    train on, and with `load_best_model_at_end` it finishes the stage from the best checkpoint, not the last."""
    schedule = Schedule("best", [Stage("a", ["adapter"], {"asr": 1.0}, steps=4)])
    scores = [3.0, 1.0, 2.0, 4.0]
    settings = dict(schedule=schedule, save_steps=1, eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
                    metric_for_best_model="score", greater_is_better=False, trainer_kwargs={"eval_dataset": _eval_samples()})
    trainer = tiny_trainer(tmp_path, callbacks=[CrashAtStageEnd(0)], **settings)
    trainer.compute_metrics = lambda _: {"score": scores[trainer.state.global_step - 1]}
    with pytest.raises(RuntimeError, match="stage end"):
        trainer.train()
    stage_dir = tmp_path / "stage-0-a"
    assert not (stage_dir / "stage_complete.json").exists()
    tiny_trainer(tmp_path, **settings).train(resume_from_checkpoint=True)
    assert not (stage_dir / "checkpoint-5").exists()
    stage_weights, best_weights = _weights(stage_dir / "stage_model"), _weights(stage_dir / "checkpoint-2")
    assert all(torch.equal(stage_weights[k], best_weights[k]) for k in best_weights), "resumed stage not on its best"
    assert json.loads((stage_dir / "stage_complete.json").read_text())["best_model_checkpoint"] == str(
        stage_dir / "checkpoint-2"
    )


def test_stages_train_with_copies_of_the_arguments_and_push_nothing(tmp_path, monkeypatch):
    """Each stage trains with a copy of the run's arguments (its folder, length, learning rate; push_to_hub off, so
    the Trainer pushes no stage checkpoint); the user's arguments object is never edited, and the final save pushes
    nothing either (publishing is an explicit `push_to_hub()` after the model card is written)."""
    from transformers import Trainer, TrainerCallback

    from trainers import PartTrainer

    monkeypatch.setattr(Trainer, "init_hf_repo", lambda self, *a, **k: None)  # no Hub repository at set-up
    pushes = []
    monkeypatch.setattr(PartTrainer, "push_to_hub", lambda self, *a, **k: pushes.append(a))
    saves = []

    class RecordArguments(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saves.append((args, args.output_dir, args.max_steps, args.learning_rate, args.push_to_hub))

    schedule = Schedule("two", [Stage("a", ["adapter"], {"asr": 1.0}, steps=2),
                                Stage("b", ["adapter"], {"asr": 1.0}, steps=2, lr_scale=0.5)])
    trainer = tiny_trainer(tmp_path, schedule=schedule, callbacks=[RecordArguments()], learning_rate=1e-3,
                           push_to_hub=True, hub_model_id="someone/part")
    user_args = trainer.args
    before = user_args.to_dict()
    trainer.train()
    assert trainer.args is user_args and user_args.to_dict() == before
    assert [s[1:] for s in saves] == [(str(tmp_path / "stage-0-a"), 2, 1e-3, False),
                                      (str(tmp_path / "stage-1-b"), 2, 5e-4, False)]
    assert all(s[0] is not user_args for s in saves)
    assert not pushes
    assert torch.load(tmp_path / "training_args.bin", weights_only=False).to_dict() == before
