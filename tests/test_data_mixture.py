"""Tests for the mixture part of trainers.data: probabilities, determinism, resuming, sharding, length
grouping and invalid samples."""

import pickle
from collections import Counter
from itertools import islice

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers.testing_utils import CaptureLogger

from trainers import data as data_module
from trainers.data import (
    InvalidSampleError,
    LengthGrouping,
    MixtureComponent,
    MixtureDataset,
    TokenBudget,
    mixture_probabilities,
    sample_length,
    validate_sample,
)


CHI2_CRITICAL_P001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}  # chi-square quantiles at p = 0.001


def speech_dataset(name, size, seed=0):
    rng = np.random.default_rng(seed)
    durations = rng.uniform(1.0, 20.0, size).round(2)
    return datasets.Dataset.from_dict(
        {
            "id": [f"{name}-{i}" for i in range(size)],
            "text": [f"{name} sentence {i}" for i in range(size)],
            "audio": [{"path": f"{name}/{i}.wav", "bytes": None} for i in range(size)],
            "duration": durations.tolist(),
        }
    )


def text_dataset(name, size):
    return datasets.Dataset.from_dict(
        {
            "id": [f"{name}-{i}" for i in range(size)],
            "text": ["target"] * size,
            "source_text": [f"source {i}" for i in range(size)],
        }
    )


def map_components():
    return [
        MixtureComponent("asr_de", speech_dataset("asr_de", 50), "asr", "de", "de", weight=1.0),
        MixtureComponent("asr_en", speech_dataset("asr_en", 200, seed=1), "asr", "en", "en", weight=0.5),
        MixtureComponent("s2tt_de_en", speech_dataset("s2tt_de_en", 100, seed=2), "s2tt", "de", "en", weight=2.0),
    ]


def mixed_components():
    """Map-style and iterable components together (iterables with a size hint)."""
    return [
        MixtureComponent("asr_de", speech_dataset("asr_de", 40), "asr", "de", "de"),
        MixtureComponent(
            "s2tt_fr_en",
            speech_dataset("s2tt_fr_en", 30, seed=3).to_iterable_dataset(num_shards=3).shuffle(seed=0, buffer_size=8),
            "s2tt",
            "fr",
            "en",
            num_samples=30,
        ),
        MixtureComponent(
            "mt_de_en",
            text_dataset("mt_de_en", 25).to_iterable_dataset(num_shards=1),
            "mt",
            "de",
            "en",
            num_samples=25,
        ),
    ]


def ids(samples):
    return [sample["id"] for sample in samples]


def take(mixture, count):
    return list(islice(iter(mixture), count))


def chi_square(counts, probabilities, total):
    return sum((counts.get(key, 0) - total * p) ** 2 / (total * p) for key, p in probabilities.items())


# --- probabilities and frequencies ---------------------------------------------------------------------------


def test_mixture_probabilities_formula():
    components = map_components()  # (w * n) = 50, 100, 200
    np.testing.assert_allclose(mixture_probabilities(components), np.array([50, 100, 200]) / 350)
    expected = np.array([50, 100, 200]) ** 0.5
    np.testing.assert_allclose(mixture_probabilities(components, temperature=2.0), expected / expected.sum())
    np.testing.assert_allclose(mixture_probabilities(components, size_proportional=False), np.array([1, 0.5, 2]) / 3.5)
    np.testing.assert_allclose(
        mixture_probabilities(components, temperature=1e-3), [0, 0, 1], atol=1e-12
    )  # no overflow
    iterable = [
        MixtureComponent(
            c.name, c.dataset.to_iterable_dataset(), c.task, c.source_language, c.target_language, c.weight
        )
        for c in components
    ]
    expected = np.array([1, 0.5, 2]) ** (1 / 3)
    np.testing.assert_allclose(
        mixture_probabilities(iterable, temperature=3.0), expected / expected.sum()
    )  # sizes unknown
    with pytest.raises(ValueError, match=r"\['asr_de'\] have no known size.*num_samples"):
        mixture_probabilities([iterable[0], *components[1:]])


@pytest.mark.parametrize("make_components", [map_components, mixed_components], ids=["map_style", "with_iterables"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_empirical_frequencies_match_probabilities(make_components, temperature):
    mixture = MixtureDataset(make_components(), temperature=temperature, seed=3)
    draws = 20_000
    counts = Counter((s["task"], s["source_language"], s["target_language"]) for s in take(mixture, draws))
    expected = {
        (c.task, c.source_language, c.target_language): p
        for c, p in zip(mixture.components, mixture.probabilities.values())
    }
    assert set(counts) == set(expected)
    assert chi_square(counts, expected, draws) < CHI2_CRITICAL_P001[len(expected) - 1]


def test_temperature_upsamples_small_components():
    shares = {}
    for temperature in (1.0, 5.0):
        mixture = MixtureDataset(map_components(), temperature=temperature, seed=0)
        shares[temperature] = Counter(s["source_language"] + s["task"] for s in take(mixture, 5000))["deasr"] / 5000
    assert shares[1.0] == pytest.approx(50 / 350, abs=0.02)
    assert shares[5.0] > shares[1.0] + 0.1  # flatter: closer to 1/3


# --- determinism, epochs, without replacement ---------------------------------------------------------------


def test_deterministic_for_seed_and_epoch():
    first = ids(take(MixtureDataset(mixed_components(), seed=7), 300))
    assert ids(take(MixtureDataset(mixed_components(), seed=7), 300)) == first
    assert ids(take(MixtureDataset(mixed_components(), seed=8), 300)) != first
    mixture = MixtureDataset(mixed_components(), seed=7)
    assert ids(take(mixture, 300)) == first == ids(take(mixture, 300))  # re-iterating replays the epoch
    mixture.set_epoch(1)
    assert ids(take(mixture, 300)) != first


def test_map_style_draws_without_replacement_and_exhaust_mode_yields_everything_once():
    single = MixtureDataset([MixtureComponent("asr_de", speech_dataset("asr_de", 50), "asr", "de", "de")], seed=1)
    drawn = ids(take(single, 100))
    assert sorted(drawn[:50]) == sorted(drawn[50:]) == sorted(f"asr_de-{i}" for i in range(50))
    assert drawn[:50] != drawn[50:]  # a new permutation per pass
    everything = ids(MixtureDataset(mixed_components(), stopping_strategy="exhaust", seed=1))
    assert len(everything) == len(set(everything)) == 40 + 30 + 25


def test_samples_are_labelled_by_their_component():
    sample = take(MixtureDataset(mixed_components()[2:], seed=0), 1)[0]
    assert (sample["task"], sample["source_language"], sample["target_language"]) == ("mt", "de", "en")
    assert sample["source_text"].startswith("source")


# --- resuming ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grouping", [None, LengthGrouping(batch_size=4, buffer_batches=5)], ids=["plain", "length_grouped"]
)
@pytest.mark.parametrize("stopping_strategy", ["cycle", "exhaust"])
def test_state_dict_resume_reproduces_remaining_sequence(grouping, stopping_strategy):
    def make():
        return MixtureDataset(
            mixed_components(), seed=5, stopping_strategy=stopping_strategy, length_grouping=grouping
        )

    reference = ids(take(make(), 150))
    mixture = make()
    iterator = iter(mixture)
    head = ids(islice(iterator, 63))
    state = pickle.loads(pickle.dumps(mixture.state_dict()))
    assert state["samples_yielded"] == 63
    resumed = make()
    resumed.set_epoch(0)  # what the Trainer does; keeps the loaded position
    resumed.load_state_dict(state)
    assert head + ids(take(resumed, 150 - 63)) == reference


def test_state_dict_resume_keeps_epoch_and_skip_counts():
    mixture = MixtureDataset(invalid_components(), seed=0, skip_invalid=True)
    mixture.set_epoch(2)
    iterator = iter(mixture)
    head = ids(islice(iterator, 40))
    state = mixture.state_dict()
    resumed = MixtureDataset(invalid_components(), seed=0, skip_invalid=True)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2 and resumed.skipped == mixture.skipped
    reference = MixtureDataset(invalid_components(), seed=0, skip_invalid=True)
    reference.set_epoch(2)
    assert head + ids(take(resumed, 60)) == ids(take(reference, 100))


def test_load_state_dict_rejects_other_mixture():
    state = MixtureDataset(map_components(), seed=1).state_dict()
    with pytest.raises(ValueError, match=r"differs in \['seed'\]"):
        MixtureDataset(map_components(), seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"differs in \['length_grouping', 'probabilities'\]"):
        MixtureDataset(map_components(), seed=1, temperature=2.0, length_grouping=LengthGrouping(4)).load_state_dict(
            state
        )
    mixture = MixtureDataset(map_components(), seed=1, rank=0, world_size=2)
    take(mixture, 3)
    other_rank = MixtureDataset(map_components(), seed=1, rank=1, world_size=2)
    other_rank.load_state_dict(mixture.state_dict())
    with pytest.raises(ValueError, match="saved by process 0 of 2.*this is process 1 of 2"):
        take(other_rank, 1)


def test_load_state_dict_rejects_a_state_of_another_format():
    """A token-budget state of the previous release (no `format`; its `buffer_offset` counted global batches) would
    resume at the wrong batch: it is refused, naming the way out."""
    budget = TokenBudget(max_audio_seconds=60.0, buffer_size=16)
    mixture = MixtureDataset(map_components(), seed=1, token_budget=budget)
    take(mixture, 3)
    state = mixture.state_dict()
    MixtureDataset(map_components(), seed=1, token_budget=budget).load_state_dict(state)  # this release's: fine
    del state["format"]
    with pytest.raises(ValueError, match=r"format None .* reads format 2; restart the epoch, or resume by count"):
        MixtureDataset(map_components(), seed=1, token_budget=budget).load_state_dict(state)


def batches_of(mixture, batch_size, num_workers, count=None):
    loader = DataLoader(mixture, batch_size=batch_size, num_workers=num_workers, collate_fn=ids)
    return list(islice(loader, count))


@pytest.mark.slow
def test_resume_from_consumed_with_dataloader_workers():
    def make():
        return MixtureDataset(
            mixed_components(), seed=4, length_grouping=LengthGrouping(batch_size=3, buffer_batches=4)
        )

    reference = batches_of(make(), batch_size=3, num_workers=2, count=30)
    resumed = make()
    resumed.resume_from_consumed(11 * 3, batch_size=3)  # e.g. global_step * accumulation * per-device batch size
    assert batches_of(resumed, batch_size=3, num_workers=2, count=19) == reference[11:]
    single_process = make()
    single_process.resume_from_consumed(33)
    assert ids(take(single_process, 30)) == [i for batch in batches_of(make(), 3, 0, 21)[11:] for i in batch]


# --- sharding across ranks and workers -----------------------------------------------------------------------


@pytest.mark.parametrize("make_components", [map_components, mixed_components], ids=["map_style", "with_iterables"])
def test_rank_sharding_is_disjoint_covering_and_interleaved(make_components):
    world_size = 3
    global_sequence = ids(MixtureDataset(make_components(), seed=2, stopping_strategy="exhaust"))
    per_rank = [
        ids(MixtureDataset(make_components(), seed=2, stopping_strategy="exhaust", rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    for rank, samples in enumerate(per_rank):
        assert samples == global_sequence[rank::world_size]  # global sample k goes to rank k % world_size
    assert sorted(sum(per_rank, [])) == sorted(global_sequence)


def test_rank_from_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    global_sequence = ids(MixtureDataset(map_components(), seed=2, stopping_strategy="exhaust", rank=0, world_size=1))
    assert ids(MixtureDataset(map_components(), seed=2, stopping_strategy="exhaust")) == global_sequence[1::2]


@pytest.mark.slow
def test_dataloader_workers_split_each_rank():
    world_size, num_workers = 2, 2
    global_sequence = ids(MixtureDataset(mixed_components(), seed=6, stopping_strategy="exhaust"))
    for rank in range(world_size):
        mixture = MixtureDataset(
            mixed_components(), seed=6, stopping_strategy="exhaust", rank=rank, world_size=world_size
        )
        samples = [i for batch in batches_of(mixture, batch_size=4, num_workers=num_workers) for i in batch]
        assert sorted(samples) == sorted(global_sequence[rank::world_size])


# --- length grouping -----------------------------------------------------------------------------------------


def padding_seconds(batches):
    return sum(len(batch) * max(batch) - sum(batch) for batch in batches)


def test_mixture_length_grouping_batches_similar_lengths():
    components = map_components()
    plain = take(MixtureDataset(components, seed=0), 800)
    grouped = take(
        MixtureDataset(components, seed=0, length_grouping=LengthGrouping(batch_size=8, buffer_batches=20)), 800
    )
    assert sorted(ids(grouped)) == sorted(ids(plain))  # the same samples, reordered within buffers
    durations = lambda samples: [[s["duration"] for s in samples[i : i + 8]] for i in range(0, 800, 8)]  # noqa: E731
    assert padding_seconds(durations(grouped)) < 0.2 * padding_seconds(durations(plain))
    grouping = LengthGrouping(batch_size=8, buffer_batches=20)
    assert ids(take(MixtureDataset(components, seed=0, length_grouping=grouping), 800)) == ids(grouped)  # per seed
    assert ids(take(MixtureDataset(components, seed=1, length_grouping=grouping), 800)) != ids(grouped)


def test_sample_length_defaults():
    assert sample_length({"duration": 2.5, "text": "abc"}) == 2.5
    assert sample_length({"audio": {"array": np.zeros(8000), "sampling_rate": 16000}, "text": "abc"}) == 0.5
    assert sample_length({"audio": {"path": "a.wav"}, "text": "abcd"}) == 4
    assert sample_length({"source_text": "abcdef", "text": "ab"}) == 6


# --- invalid samples -----------------------------------------------------------------------------------------


class FlakyDataset:
    """A map-style dataset whose every 10th sample cannot be read."""

    def __init__(self, size):
        self.samples = list(speech_dataset("flaky", size))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        if index % 10 == 0:
            raise OSError(f"cannot decode flaky/{index}.wav")
        return self.samples[index]


def invalid_components():
    broken_texts = speech_dataset("broken", 30).map(
        lambda s, i: {"text": "" if i % 3 == 0 else s["text"]}, with_indices=True
    )
    return [
        MixtureComponent("broken", broken_texts, "asr", "de", "de"),
        MixtureComponent("flaky", FlakyDataset(30), "s2tt", "de", "en"),
        MixtureComponent("fine", speech_dataset("fine", 30), "asr", "en", "en"),
    ]


def test_invalid_sample_error_names_component_and_index():
    with pytest.raises(
        InvalidSampleError, match=r"Invalid sample (\d+) of mixture component '(broken|flaky)'.*skip_invalid=True"
    ) as info:
        list(MixtureDataset(invalid_components(), seed=0, stopping_strategy="exhaust"))
    index = int(info.value.args[0].split()[2])
    assert index % (3 if "'broken'" in info.value.args[0] else 10) == 0


def test_skip_invalid_counts_and_logs_per_component():
    mixture = MixtureDataset(invalid_components(), seed=0, stopping_strategy="exhaust", skip_invalid=True)
    with CaptureLogger(data_module.logger) as captured:
        samples = list(mixture)
    assert mixture.skipped == Counter({"broken": 10, "flaky": 3})
    assert len(samples) == 90 - 13
    assert (
        "Skipping invalid sample" in captured.out
        and "'broken'" in captured.out
        and "cannot decode flaky/" in captured.out
    )


def test_custom_validate_and_label_conflicts():
    def reject_long(sample):
        if sample["duration"] > 10:
            raise ValueError("too long")

    mixture = MixtureDataset(
        map_components(), seed=0, stopping_strategy="exhaust", validate=reject_long, skip_invalid=True
    )
    assert all(s["duration"] <= 10 for s in mixture) and sum(mixture.skipped.values()) > 0
    labelled = speech_dataset("asr_de", 5).add_column("task", ["s2tt"] * 5)
    with pytest.raises(InvalidSampleError, match="the sample has task='s2tt' but its component declares 'asr'"):
        take(MixtureDataset([MixtureComponent("asr_de", labelled, "asr", "de", "de")]), 1)


@pytest.mark.parametrize(
    "sample, message",
    [
        ({"task": "asr", "source_language": "de", "target_language": "de", "text": "hallo"}, "needs 'audio'"),
        (
            {
                "task": "asr",
                "source_language": "de",
                "target_language": "de",
                "text": "x",
                "audio": {"path": None, "bytes": None},
            },
            "needs 'audio'",
        ),
        ({"task": "mt", "source_language": "de", "target_language": "en", "text": "hi"}, "non-empty 'source_text'"),
        (
            {"task": "s2tt", "source_language": "de", "target_language": "en", "text": " ", "audio": "a.wav"},
            "'text' must be",
        ),
        (
            {"task": "asr", "source_language": "de", "target_language": "en", "text": "x", "audio": "a.wav"},
            "source_language ==",
        ),
    ],
)
def test_validate_sample_rejects(sample, message):
    with pytest.raises(ValueError, match=message):
        validate_sample(sample)


class EmptyIterable(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(())


def test_component_and_mixture_arguments_are_checked():
    dataset = speech_dataset("x", 3)
    with pytest.raises(ValueError, match="use task 's2tt'"):
        MixtureComponent("x", dataset, "asr", "de", "en")
    with pytest.raises(ValueError, match="weight must be a positive"):
        MixtureComponent("x", dataset, "asr", "de", "de", weight=0)
    with pytest.raises(ValueError, match="is empty"):
        MixtureComponent("x", dataset.select([]), "asr", "de", "de")
    with pytest.raises(ValueError, match=r"repeated: \['x'\]"):
        MixtureDataset([MixtureComponent("x", dataset, "asr", "de", "de")] * 2)
    with pytest.raises(ValueError, match="yielded no samples"):
        take(MixtureDataset([MixtureComponent("x", EmptyIterable(), "asr", "de", "de")]), 1)


def test_schedule_check_covers_names_the_stage_the_data_and_the_hint():
    from trainers import MixtureComponent, Schedule, Stage

    schedule = Schedule("two", [Stage("asr", ["adapter"], {"asr": 1.0}, steps=1),
                                Stage("mt", ["adapter", "llm_lora"], {"mt": 1.0}, steps=1, languages=["de"])])
    asr_en = MixtureComponent("asr_en", [{"text": "x"}], "asr", "en", "en")
    mt_de = MixtureComponent("mt_de_en", [{"text": "x"}], "mt", "de", "en")
    schedule.check_covers([asr_en, mt_de])
    with pytest.raises(ValueError, match=r"Stage 'mt' of schedule 'two' samples tasks \['mt'\] in \['de'\].*\['asr_en'\]\. "
                                         r"Add --source_text_column"):
        schedule.check_covers([asr_en], hint="Add --source_text_column.")
    mt_fr = MixtureComponent("mt_fr_en", [{"text": "x"}], "mt", "fr", "en")
    with pytest.raises(ValueError, match="only gives"):
        schedule.check_covers([asr_en, mt_fr])
