"""Token-budget batching (trainers.data.TokenBudget): budgets kept, deterministic, exact resume, the mixture's
proportions, rank sharding with equal batch counts, positions as the processor builds them, and a step's gradient
independent of how its samples were grouped (the loss normalised by `num_items_in_batch`)."""

import pickle
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from accelerate.data_loader import IterableDatasetShard
from torch.utils.data import DataLoader
from transformers.testing_utils import CaptureLogger

from test_data_mixture import CHI2_CRITICAL_P001, chi_square, map_components, mixed_components
from test_examples import COMMON, restore_logging, run_speech_translation, workdir  # noqa: F401 (fixtures)
from trainers import data as data_module
from trainers.data import MixtureDataset, TokenBudget, processor_positions, sample_seconds
from trainers.freeze import set_trainable


def positions(sample):
    """A stand-in for the processor's count: prompt + 12.5 audio positions per second + target characters."""
    text = sample.get("source_text", "") if sample["task"] == "mt" else ""
    return int(8 + 12.5 * sample_seconds(sample) + len(text) + len(sample["text"]))


def budget(**overrides):
    settings = dict(max_tokens=600, max_audio_seconds=40.0, buffer_size=64, positions_fn=positions)
    return TokenBudget(**{**settings, **overrides})


def ids(batches):
    return [[sample["id"] for sample in batch] for batch in batches]


def take(mixture, count):
    return list(islice(iter(mixture), count))


def test_batches_stay_within_the_budget_and_exhaust_yields_every_sample_once():
    token_budget = budget()
    batches = list(MixtureDataset(mixed_components(), seed=3, stopping_strategy="exhaust", token_budget=token_budget))
    for batch in batches:
        costs = [token_budget.costs(sample) for sample in batch]
        longest = max(c[0] for c in costs), max(c[1] for c in costs)
        assert len(batch) * longest[0] <= 600 and len(batch) * longest[1] <= 40.0, [c for c in costs]
    flat = [i for batch in ids(batches) for i in batch]
    assert len(flat) == len(set(flat)) == 40 + 30 + 25
    assert len({len(batch) for batch in batches}) > 3  # sizes follow the lengths
    assert {sample["task"] for batch in batches for sample in batch} == {"asr", "s2tt", "mt"}


def test_a_sample_over_the_budget_gets_a_batch_of_its_own_and_a_warning():
    token_budget = budget(max_tokens=None, max_audio_seconds=5.0)  # durations 1-20 s: many clips exceed 5 s
    mixture = MixtureDataset(map_components(), seed=0, stopping_strategy="exhaust", token_budget=token_budget)
    logger = data_module.logger
    with CaptureLogger(logger) as captured:
        batches = list(mixture)
    oversized = [batch for batch in batches if batch[0]["duration"] > 5.0]
    assert oversized and all(len(batch) == 1 for batch in oversized)
    assert sum(mixture.oversized.values()) == len(oversized)
    assert "exceeds the token budget on its own" in captured.out
    assert sum(len(batch) for batch in batches) == 50 + 200 + 100  # nothing dropped


def test_deterministic_for_seed_and_epoch_and_less_padding_than_fixed_batches():
    def make(seed):
        return MixtureDataset(map_components(), seed=seed, token_budget=budget(max_tokens=None, max_audio_seconds=60.0))

    first = ids(take(make(7), 40))
    assert ids(take(make(7), 40)) == first
    assert ids(take(make(8), 40)) != first
    mixture = make(7)
    mixture.set_epoch(1)
    assert ids(take(mixture, 40)) != first
    batches = take(make(7), 40)
    padded = sum(len(b) * max(s["duration"] for s in b) for b in batches)
    audio = sum(s["duration"] for b in batches for s in b)
    plain = [s["duration"] for s in take(MixtureDataset(map_components(), seed=7), 800)]
    fixed = [plain[i : i + 8] for i in range(0, 800, 8)]
    fixed_share = 1 - sum(plain) / sum(8 * max(b) for b in fixed)
    assert 1 - audio / padded < 0.25 * fixed_share


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="needs max_tokens and/or max_audio_seconds"):
        TokenBudget()
    with pytest.raises(ValueError, match="needs positions_fn"):
        TokenBudget(max_tokens=100)
    with pytest.raises(ValueError, match="max_audio_seconds must be > 0"):
        TokenBudget(max_audio_seconds=0)
    with pytest.raises(ValueError, match="not both"):
        MixtureDataset(map_components(), token_budget=budget(), length_grouping=data_module.LengthGrouping(4))
    with pytest.raises(ValueError, match="duration of this 'asr' sample is unknown"):
        sample_seconds({"task": "asr", "audio": {"path": None, "bytes": None}})


@pytest.mark.parametrize("num_buckets", [0, 4])
@pytest.mark.parametrize("stopping_strategy", ["cycle", "exhaust"])
def test_state_dict_resume_mid_stage_sees_every_batch_once(num_buckets, stopping_strategy):
    def make():
        token_budget = budget(num_buckets=num_buckets)
        return MixtureDataset(
            mixed_components(), seed=5, stopping_strategy=stopping_strategy, token_budget=token_budget
        )

    count = 40 if stopping_strategy == "cycle" else None  # None: the whole epoch
    reference = ids(take(make(), count))
    for stop in (1, 7, 13):  # inside the first buffer, and later ones
        mixture = make()
        iterator = iter(mixture)
        head = ids(islice(iterator, stop))
        state = pickle.loads(pickle.dumps(mixture.state_dict()))
        resumed = make()
        resumed.set_epoch(0)
        resumed.load_state_dict(state)
        assert head + ids(take(resumed, count and count - stop)) == reference
    if stopping_strategy == "exhaust":
        flat = [i for batch in reference for i in batch]
        assert len(flat) == len(set(flat)) == 95


def test_state_of_another_budget_is_rejected():
    state = MixtureDataset(map_components(), seed=1, token_budget=budget()).state_dict()
    with pytest.raises(ValueError, match=r"differs in \['token_budget'\]"):
        MixtureDataset(map_components(), seed=1, token_budget=budget(max_tokens=700)).load_state_dict(state)


def test_mixture_proportions_are_kept():
    mixture = MixtureDataset(map_components(), temperature=2.0, seed=3, token_budget=budget(buffer_size=200))
    samples = [sample for batch in take(mixture, 1500) for sample in batch]
    samples = samples[:10_000]
    counts = Counter((s["task"], s["source_language"]) for s in samples)
    expected = {(c.task, c.source_language): p for c, p in zip(mixture.components, mixture.probabilities.values())}
    assert chi_square(counts, expected, len(samples)) < CHI2_CRITICAL_P001[len(expected) - 1]


def test_ranks_get_disjoint_batches_in_equal_numbers():
    def make(**kwargs):
        return MixtureDataset(mixed_components(), seed=2, stopping_strategy="exhaust", token_budget=budget(), **kwargs)

    everything = ids(make())
    per_rank = [ids(make(rank=r, world_size=3)) for r in range(3)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(per_rank[2])
    kept = len(per_rank[0]) * 3
    assert kept > len(everything) - 3  # at most world_size - 1 batches dropped at the end
    for rank in range(3):
        assert per_rank[rank] == everything[:kept][rank::3]


def loader_of_rank(mixture, rank, world_size, per_device_batch_size, num_workers):
    """The DataLoader the Trainer builds on one rank: accelerate's IterableDatasetShard over the mixture."""
    shard = IterableDatasetShard(
        mixture, batch_size=per_device_batch_size, num_processes=world_size, process_index=rank
    )
    collate = (lambda items: ids(items)[0]) if mixture.token_budget is not None else (lambda s: [x["id"] for x in s])
    return DataLoader(shard, batch_size=per_device_batch_size, num_workers=num_workers, collate_fn=collate)


@pytest.mark.slow
@pytest.mark.parametrize("token_budget", [None, budget()], ids=["fixed", "token_budget"])
def test_resume_after_batches_with_ranks_and_workers(token_budget):
    """Two ranks (in-process) x two DataLoader workers, as the Trainer shards the mixture: after a resume every
    rank sees exactly the batches it would have seen (the fixed-size case went wrong before `resume_after_batches`:
    `resume_from_consumed(step x total batch, batch_size=per_device)` assumed one rank)."""
    per_device = 1 if token_budget is not None else 3

    def make():
        return MixtureDataset(mixed_components(), seed=4, token_budget=token_budget, rank=0, world_size=1)

    for rank in range(2):
        reference = list(islice(loader_of_rank(make(), rank, 2, per_device, num_workers=2), 12))
        resumed = make()
        resumed.resume_after_batches(5, per_device_batch_size=per_device, world_size=2)
        assert list(islice(loader_of_rank(resumed, rank, 2, per_device, num_workers=2), 7)) == reference[5:]


def test_processor_positions_match_the_collated_batch():
    from part_fixtures import tiny_components

    from modeling_part.tiny import build_tiny_part
    from trainers.collator import PartDataCollator

    _, processor = build_tiny_part("sensevoice", encoder_layers=1)
    count = processor_positions(processor)
    token_budget = TokenBudget(max_tokens=10_000, buffer_size=32, positions_fn=count)
    batch = take(MixtureDataset(tiny_components(), seed=0, token_budget=token_budget), 1)[0]
    assert {s["task"] for s in batch} == {"asr", "s2tt", "mt"}  # one mixed batch
    inputs = PartDataCollator(processor)(batch)
    assert inputs["attention_mask"].sum(dim=1).tolist() == [count(sample) for sample in batch]


def test_gradient_does_not_depend_on_the_grouping(tmp_path):
    """The same 4 samples as one batch or as two accumulated batches of 2 (and of 1 + 3): the Trainer's
    `num_items_in_batch` normalises the summed loss by the step's target tokens, so the gradients agree."""
    from part_fixtures import tiny_components, tiny_trainer

    trainer = tiny_trainer(tmp_path, schedule="part")
    model = trainer.model
    set_trainable(model, ["adapter", "encoder", "llm"])
    samples = take(MixtureDataset(tiny_components(), seed=1), 4)
    assert len({s["task"] for s in samples}) > 1
    gradients = []
    for grouping in ([4], [2, 2], [1, 3]):
        starts = np.cumsum([0, *grouping])
        batches = [trainer.data_collator(samples[a:b]) for a, b in zip(starts[:-1], starts[1:])]
        model.zero_grad(set_to_none=True)
        batches, num_items = trainer.get_batch_samples(iter(batches), len(batches), trainer.args.device)
        assert int(num_items) == sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        for batch in batches:
            trainer.training_step(model, batch, num_items)
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0] and set(gradients[0]) == set(gradients[1]) == set(gradients[2])
    for other in gradients[1:]:
        for name, gradient in gradients[0].items():
            torch.testing.assert_close(other[name], gradient, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_two_ddp_ranks_with_token_budgets_run_equal_steps_and_stay_identical(tmp_path):
    """Two CPU ranks (torchrun, gloo) whose budget batches hold different numbers of samples: no hang, the same
    number of optimizer steps and batches, and bitwise identical parameters at the end."""
    import json

    from part_fixtures import run_two_ranks

    run_two_ranks("ddp_budget_run.py", str(tmp_path), timeout=300)
    first, second = (json.loads((tmp_path / f"budget_rank{r}.json").read_text()) for r in range(2))
    assert first["world_size"] == second["world_size"] == 2
    assert first["steps"] == second["steps"] == 5
    assert len(first["batch_sizes"]) == len(second["batch_sizes"]) == 10  # 5 steps x 2 accumulated batches
    assert first["batch_sizes"] != second["batch_sizes"]  # the ranks' batches held different sample counts
    assert len(set(first["batch_sizes"] + second["batch_sizes"])) > 1
    differing = sorted(n for n in first["end"] if first["end"][n] != second["end"][n])
    assert not differing, f"parameters differ between the ranks: {differing[:3]}"


def test_trainer_resume_mid_stage_with_token_budget_reproduces_the_uninterrupted_run(tmp_path):
    """A crash mid-stage with token-budget batches and gradient accumulation: the resumed run trains on exactly the
    batches the uninterrupted run trained on after the checkpoint (same losses), none repeated or lost."""
    import json

    from part_fixtures import tiny_trainer
    from test_trainer import CrashAt
    from trainers import Schedule, Stage

    tasks = {"asr": 1.0, "s2tt": 1.0, "mt": 1.0}
    schedule = Schedule("budget", [Stage("all_tasks", ["adapter", "llm"], tasks, steps=6)])
    settings = dict(schedule=schedule, max_steps=6, save_steps=2, gradient_accumulation_steps=2,
                    max_tokens_per_batch=70, batch_buffer_size=16)

    def trained_batches(trainer):
        seen = []
        original = trainer.compute_loss

        def compute_loss(model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].tolist())
            return original(model, inputs, *args, **kwargs)

        trainer.compute_loss = compute_loss
        return seen

    full_trainer = tiny_trainer(tmp_path / "full", **settings)
    full = trained_batches(full_trainer)
    full_trainer.train()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(tmp_path / "crashed", callbacks=[CrashAt(0, 3)], **settings).train()
    resumed_trainer = tiny_trainer(tmp_path / "crashed", **settings)
    resumed = trained_batches(resumed_trainer)
    resumed_trainer.train(resume_from_checkpoint=True)  # from checkpoint-2: steps 3-6
    assert len({len(batch) for batch in full}) > 1  # the budget made batches of different sizes
    assert resumed == full[2 * 2 :]

    def losses(folder):
        summary = json.loads((folder / "training_summary.json").read_text())
        return [round(entry["loss"], 5) for entry in summary["losses"]["all_tasks"]]

    assert losses(tmp_path / "crashed")[-4:] == losses(tmp_path / "full")[-4:]


def test_flags_of_the_example_scripts_and_the_demo(tmp_path):
    import os
    import sys

    from transformers import HfArgumentParser

    from examples.demo.run_demo import DemoArguments

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    from speech_text_utils import DataTrainingArguments, parse_arguments

    flags = ["--model_name_or_path", "some/model", "--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"]
    *_, training_args = parse_arguments(
        DataTrainingArguments, [*flags, "--max_tokens_per_batch", "3000", "--max_audio_seconds_per_batch", "120",
                                "--max_samples_per_batch", "64", "--batch_buckets", "8"],
    )  # fmt: skip
    assert training_args.uses_token_budget
    assert (training_args.max_tokens_per_batch, training_args.max_audio_seconds_per_batch) == (3000, 120.0)
    assert (training_args.max_samples_per_batch, training_args.batch_buckets) == (64, 8)
    *_, fixed = parse_arguments(DataTrainingArguments, flags)
    assert not fixed.uses_token_budget
    with pytest.raises(ValueError, match="set length_grouping_batches=0"):
        parse_arguments(
            DataTrainingArguments, [*flags, "--max_tokens_per_batch", "3000", "--length_grouping_batches", "5"]
        )
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=["--max_tokens_per_batch", "900"])
    assert demo.max_tokens_per_batch == 900


def test_a_stage_in_epochs_is_refused_with_token_budgets(tmp_path):
    from part_fixtures import tiny_trainer
    from trainers import Schedule, Stage

    schedule = Schedule("epochs", [Stage("asr", ["adapter"], {"asr": 1.0}, epochs=1)])
    trainer = tiny_trainer(tmp_path, schedule=schedule, max_tokens_per_batch=70)
    with pytest.raises(ValueError, match="'asr' is given in epochs, but token-budget batches"):
        trainer.train()


@pytest.mark.slow
def test_speech_translation_script_trains_on_token_budget_batches(workdir, restore_logging):
    """The example script with --max_tokens_per_batch on asr + s2tt + mt from audio files without a duration column
    (read from the files' headers)."""
    import json

    root = workdir
    out = root / "budget_run"
    run_speech_translation.main([
        "--model_name_or_path", str(root / "model"), "--train_file", str(root / "train.jsonl"),
        "--language_column", "language", "--target_language", "en", "--text_column", "translation",
        "--source_text_column", "sentence", "--schedule", str(root / "asr_then_cross.json"), "--lora_r", "2",
        "--max_steps", "2", "--output_dir", str(out), "--cache_dir", str(root / "cache"), "--do_train", *COMMON,
        "--max_tokens_per_batch", "60",
    ])  # fmt: skip
    summary = json.loads((out / "training_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["asr", "cross"]
