"""Training data for PART: task/language mixtures of speech and text corpora, deterministic, resumable and
sharded over ranks and DataLoader workers, optionally cut into length-grouped or token-budget batches.

A sample is a dict with `task` ("asr", "s2tt" or "mt"), `source_language`, `target_language`, `text` (the
target) and `audio` (path, array or undecoded `datasets.Audio` dict) or, for "mt", `source_text`; each
`MixtureComponent` declares the task and languages once. Why this is not built on `datasets`: docs/batching.md.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, Literal

import datasets
import numpy as np
import soundfile
import torch
from torch.utils.data import IterableDataset, get_worker_info
from transformers.utils import logging

from modeling_part.processing_part import SPEECH_TASKS, TASKS


logger = logging.get_logger(__name__)


class InvalidSampleError(ValueError):
    """A sample could not be read or failed validation; the message names its component and index."""


class DroppedSample(ValueError):
    """Raised by a validator to drop a sample on purpose; counted in `skipped` as `"<component> (<reason>)"`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def validate_sample(sample: Mapping[str, Any]) -> None:
    """The default sample check: the keys its task needs are present and non-empty. Raises `ValueError`."""
    task = sample.get("task")
    if task not in TASKS:
        raise ValueError(f"task is {task!r}; expected one of {TASKS}")
    for key in ("source_language", "target_language", "text"):
        if not isinstance(sample.get(key), str) or not sample[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string, got {sample.get(key)!r}")
    if task == "asr" and sample["source_language"] != sample["target_language"]:
        raise ValueError(
            f"task 'asr' needs source_language == target_language, got {sample['source_language']!r} and "
            f"{sample['target_language']!r}"
        )
    if task in SPEECH_TASKS:
        audio = sample.get("audio")
        if audio is None or (
            isinstance(audio, Mapping) and all(audio.get(key) is None for key in ("path", "bytes", "array"))
        ):
            raise ValueError(f"a {task!r} sample needs 'audio' (a path, an array or an Audio dict), got {audio!r}")
    elif not isinstance(sample.get("source_text"), str) or not sample["source_text"].strip():
        raise ValueError(f"an 'mt' sample needs a non-empty 'source_text', got {sample.get('source_text')!r}")


def audio_seconds(sample: Mapping[str, Any], read_header: bool = True) -> float | None:
    """A speech sample's duration without decoding: its `duration`, else a decoded array's length, else (with
    `read_header`) its file header (`soundfile.info` of the path or bytes); None when none is readable."""
    if sample.get("duration") is not None:
        return float(sample["duration"])
    audio = sample.get("audio")
    if isinstance(audio, Mapping) and audio.get("array") is not None and audio.get("sampling_rate"):
        return len(audio["array"]) / audio["sampling_rate"]
    if not read_header:
        return None
    source = audio.get("bytes") or audio.get("path") if isinstance(audio, Mapping) else audio
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike, io.BytesIO)):
        try:
            return float(soundfile.info(source).duration)
        except (soundfile.LibsndfileError, OSError, RuntimeError):
            pass
    return None


def sample_seconds(sample: Mapping[str, Any]) -> float:
    """Audio seconds of a sample for token budgets (`audio_seconds`; 0 for "mt"). Raises `ValueError` if unknown."""
    if sample.get("task") == "mt":
        return 0.0
    if (seconds := audio_seconds(sample)) is None:
        raise ValueError(
            f"the duration of this {sample.get('task')!r} sample is unknown (audio "
            f"{type(sample.get('audio')).__name__}); give the samples a 'duration' column (seconds), an audio path, "
            "or a decoded Audio dict"
        )
    return seconds


@dataclass(frozen=True)
class AudioLengthValidator:
    """A validator (`MixtureDataset(validate=...)`): `validate`, then no speech sample longer than
    `max_audio_seconds` (the processor's `effective_max_audio_seconds`), so nothing is truncated. A longer sample
    is an error, or with `drop=True` dropped and counted as `"<component> (audio over <max> s)"`. Samples of
    unreadable length (see `audio_seconds`) pass; the processor refuses them when it decodes them."""

    max_audio_seconds: float
    drop: bool = False
    validate: Callable[[Mapping[str, Any]], None] = validate_sample

    def __call__(self, sample: Mapping[str, Any]) -> None:
        self.validate(sample)
        seconds = audio_seconds(sample) if sample.get("task") in SPEECH_TASKS else None
        if seconds is not None and seconds > self.max_audio_seconds:
            message = f"audio of {seconds:.1f} s is longer than the {self.max_audio_seconds} s the model takes"
            if self.drop:
                raise DroppedSample(f"{message} (dropped: drop_long_audio)", f"audio over {self.max_audio_seconds:g} s")
            raise ValueError(
                f"{message} (processor.max_audio_seconds); split such recordings, or drop them explicitly with "
                "drop_long_audio=True (PartTrainingArguments / --drop_long_audio)"
            )


def sample_length(sample: Mapping[str, Any]) -> float:
    """Default length for grouping: `duration` or a decoded array's seconds, else the characters of `source_text`
    ("mt") or `text`. Give all speech samples a `duration` or none (seconds and characters differ), or a `length_fn`."""
    seconds = audio_seconds(sample, read_header=False)
    return float(len(sample.get("source_text") or sample.get("text") or "")) if seconds is None else seconds


@dataclass
class LengthGrouping:
    """Length grouping in a `MixtureDataset`: each process sorts `buffer_batches * batch_size` of its samples and
    yields them as batches of similar length in random order. Give the DataLoader the same `batch_size`."""

    batch_size: int
    buffer_batches: int = 50
    length_fn: Callable[[Mapping[str, Any]], float] = sample_length

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.buffer_batches < 1:
            raise ValueError(
                "LengthGrouping needs batch_size >= 1 and buffer_batches >= 1, "
                f"got {self.batch_size} and {self.buffer_batches}."
            )

    @property
    def buffer_size(self) -> int:
        return self.batch_size * self.buffer_batches

    def make_batches(self, buffer: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> list[list[int]]:
        """Indices of `buffer` sorted by length (stable), cut into batches of `batch_size`, in random batch order."""
        order = sorted(range(len(buffer)), key=lambda index: self.length_fn(buffer[index]))
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        return [batches[index] for index in rng.permutation(len(batches))]


@dataclass
class TokenBudget:
    """Batches filled up to a budget instead of a fixed size (docs/batching.md): each buffer of `buffer_size`
    samples is sorted by length (`positions_fn` with `max_tokens`, else `seconds_fn`), split into `num_buckets`
    buckets of equal counts if > 0 (draw order inside one), and cut so that `batch size x longest sample` stays
    within `max_tokens` LLM positions, `max_audio_seconds` and `max_batch_size` samples, each when given. A sample
    over the budget on its own gets a batch of its own and a logged warning."""

    max_tokens: int | None = None
    max_audio_seconds: float | None = None
    max_batch_size: int | None = None
    num_buckets: int = 0
    buffer_size: int = 2000
    positions_fn: Callable[[Mapping[str, Any]], int] | None = None
    seconds_fn: Callable[[Mapping[str, Any]], float] = sample_seconds

    def __post_init__(self) -> None:
        if self.max_tokens is None and self.max_audio_seconds is None:
            raise ValueError("TokenBudget needs max_tokens and/or max_audio_seconds.")
        for name in ("max_tokens", "max_audio_seconds", "max_batch_size"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"TokenBudget.{name} must be > 0 (or None), got {value!r}.")
        if self.num_buckets < 0 or self.buffer_size < 1:
            raise ValueError(
                "TokenBudget needs num_buckets >= 0 and buffer_size >= 1, "
                f"got {self.num_buckets} and {self.buffer_size}."
            )
        if self.max_tokens is not None and self.positions_fn is None:
            raise ValueError(
                "TokenBudget(max_tokens=...) needs positions_fn (sample -> LLM positions), e.g. "
                "processor_positions(processor); or budget audio with max_audio_seconds only."
            )

    def costs(self, sample: Mapping[str, Any]) -> tuple[int, float]:
        """(LLM positions, audio seconds) of one sample; positions are 0 without `max_tokens`."""
        positions = int(self.positions_fn(sample)) if self.max_tokens is not None else 0
        return positions, float(self.seconds_fn(sample))

    def fits(self, size: int, positions: int, seconds: float) -> bool:
        """Whether `size` samples padded to `positions` and `seconds` stay within the budget."""
        return (
            (self.max_tokens is None or size * positions <= self.max_tokens)
            and (self.max_audio_seconds is None or size * seconds <= self.max_audio_seconds)
            and (self.max_batch_size is None or size <= self.max_batch_size)
        )

    def make_batches(self, buffer: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> list[list[int]]:
        """Indices of `buffer` cut into batches within the budget, in random batch order."""
        costs = [self.costs(sample) for sample in buffer]
        key = (lambda i: costs[i]) if self.max_tokens is not None else (lambda i: costs[i][1])
        buckets = [sorted(range(len(costs)), key=key)]
        if self.num_buckets > 0:  # draw order inside a bucket
            buckets = [sorted(b.tolist()) for b in np.array_split(np.array(buckets[0], np.int64), self.num_buckets)]
        batches: list[list[int]] = []
        for bucket in buckets:
            batch, longest = [], (0, 0.0)
            for index in bucket:
                grown = (max(longest[0], costs[index][0]), max(longest[1], costs[index][1]))
                if batch and not self.fits(len(batch) + 1, *grown):
                    batches.append(batch)
                    batch, grown = [], costs[index]
                batch.append(index)
                longest = grown
            if batch:
                batches.append(batch)
        return [batches[index] for index in rng.permutation(len(batches))]


def processor_positions(processor: Any) -> Callable[[Mapping[str, Any]], int]:
    """sample -> LLM positions (prompt + audio placeholders + target + EOS) as `processor` builds the training
    input, the placeholder count from the audio's duration (`sample_seconds`), so nothing is decoded."""
    prompt_lengths: dict[tuple[str, str, str], int] = {}
    rate = processor.feature_extractor.sampling_rate

    def positions(sample: Mapping[str, Any]) -> int:
        task, source, target = sample["task"], sample["source_language"], sample.get("target_language")
        target_length = len(processor.tokenizer(sample["text"], add_special_tokens=False)["input_ids"]) + 1
        if task == "mt":
            instruction = processor.instruction(task, source, target, sample["source_text"])
            return len(processor.build_prompt_ids(instruction, None)) + target_length
        if (task, source, target) not in prompt_lengths:  # the prompt with one placeholder, per task and languages
            prompt_lengths[task, source, target] = len(
                processor.build_prompt_ids(processor.instruction(task, source, target), 1)
            )
        audio_positions = processor.audio_placeholder_count(int(round(sample_seconds(sample) * rate)))
        return prompt_lengths[task, source, target] - 1 + audio_positions + target_length

    return positions


# Tags that keep the random streams of one seed apart.
_CHOICE_STREAM, _ORDER_STREAM, _BATCH_ORDER_STREAM = 0, 1, 2
_MAX_LOGGED_SKIPS = 10  # per component and process; later skips are only counted
_NOT_READ = object()  # a map-style element that has not been fetched yet
_STATE_FORMAT = 2  # 2: a batching mixture's `buffer_offset` counts this process's items of the buffer


@dataclass
class MixtureComponent:
    """One corpus of a mixture (`name` unique), with the task and languages set on all its samples, a relative
    sampling `weight` and, for an iterable dataset, its size `num_samples` if known. `dataset` is map-style
    (`__len__` and `__getitem__`) or iterable, read in full by every process (do not pre-split it); keep its audio
    undecoded (`datasets.Audio(decode=False)`): the collator decodes what a batch needs."""

    name: str
    dataset: Any
    task: str
    source_language: str
    target_language: str
    weight: float = 1.0
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"MixtureComponent {self.name!r}: task is {self.task!r}; expected one of {TASKS}.")
        if self.task == "asr" and self.source_language != self.target_language:
            raise ValueError(
                f"MixtureComponent {self.name!r}: task 'asr' needs source_language == target_language, got "
                f"{self.source_language!r} and {self.target_language!r}; use task 's2tt' for translation."
            )
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"MixtureComponent {self.name!r}: weight must be a positive number, got {self.weight!r}.")
        if self.is_map_style:
            if self.num_samples is not None and self.num_samples != len(self.dataset):
                raise ValueError(
                    f"MixtureComponent {self.name!r}: num_samples={self.num_samples} but the dataset has "
                    f"{len(self.dataset)} samples; leave num_samples unset for map-style datasets."
                )
            if len(self.dataset) == 0:
                raise ValueError(f"MixtureComponent {self.name!r}: the dataset is empty.")
        elif not hasattr(self.dataset, "__iter__"):
            raise TypeError(
                f"MixtureComponent {self.name!r}: dataset must be map-style (__len__ and __getitem__) or iterable, "
                f"got {type(self.dataset).__name__}."
            )

    @property
    def is_map_style(self) -> bool:
        data = self.dataset
        return not isinstance(data, IterableDataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__")

    @property
    def size(self) -> int | None:
        """Number of samples: `len(dataset)` for map-style, `num_samples` (possibly None) for iterable."""
        return len(self.dataset) if self.is_map_style else self.num_samples


def mixture_probabilities(
    components: Sequence[MixtureComponent], temperature: float = 1.0, size_proportional: bool = True
) -> np.ndarray:
    """Probability of drawing each component at each step, by temperature sampling: with sizes (all known and
    `size_proportional`) p_i ∝ (w_i · n_i)^(1/T) (T = 1 is size-proportional, T > 1 flattens towards uniform),
    without (none known, or `size_proportional=False`) p_i ∝ w_i^(1/T). Only some sizes known is an error."""
    if not components:
        raise ValueError("A mixture needs at least one MixtureComponent.")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
    weights = np.array([component.weight for component in components], dtype=np.float64)
    sizes = [component.size for component in components]
    if size_proportional and any(size is not None for size in sizes):
        unknown = [component.name for component, size in zip(components, sizes) if size is None]
        if unknown:
            raise ValueError(
                f"Mixture components {unknown} have no known size while the others do, so size-proportional "
                "sampling is undefined; give them num_samples=<approximate size> or pass size_proportional=False."
            )
        weights = weights * np.array(sizes, dtype=np.float64)
    logits = np.log(weights) / temperature
    probabilities = np.exp(logits - logits.max())
    return probabilities / probabilities.sum()


def _settings(batching: LengthGrouping | TokenBudget | None) -> list[Any] | None:
    """The settings of a `LengthGrouping` or `TokenBudget` that shape its batches: its fields but the `*_fn`."""
    return batching and [getattr(batching, f.name) for f in fields(batching) if not f.name.endswith("_fn")]


def _consume(iterator: Iterator[Any], count: int) -> None:
    deque(islice(iterator, count), maxlen=0)


class _MixtureCursor:
    """Where one epoch's global sequence stands: the component-choice RNG, and each component's pass and offset
    in it. Every process walks the same cursor."""

    def __init__(self, mixture: MixtureDataset, snapshot: Mapping[str, Any] | None) -> None:
        self.mixture = mixture
        count = len(mixture.components)
        self.rng = np.random.default_rng([mixture.seed, mixture.epoch, _CHOICE_STREAM])
        self.position, self.passes, self.offsets, self.active = 0, [0] * count, [0] * count, [True] * count
        if snapshot is not None:
            self.rng.bit_generator.state = snapshot["rng"]
            self.position = snapshot["position"]
            self.passes, self.offsets, self.active = (list(snapshot[k]) for k in ("passes", "offsets", "active"))
        self._orders: list[np.ndarray | None] = [None] * count
        self._iterators: list[Iterator[Any] | None] = [None] * count
        self._cumulative: tuple[np.ndarray, np.ndarray] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"position": self.position, "rng": self.rng.bit_generator.state, "passes": list(self.passes),
                "offsets": list(self.offsets), "active": list(self.active)}

    def draw(self) -> tuple[int, int, int, Any] | None:
        """The next global position: `(position, component index, index in component, element)`, element being
        the sample of an iterable component or `_NOT_READ`; None at the end."""
        while any(self.active):
            if self._cumulative is None:
                active = np.flatnonzero(self.active)
                probabilities = self.mixture._probabilities[active]
                self._cumulative = active, np.cumsum(probabilities) / probabilities.sum()
            active, cumulative = self._cumulative
            choice = min(np.searchsorted(cumulative, self.rng.random(), side="right"), len(active) - 1)
            component_index = int(active[choice])
            taken = self._take(component_index)
            if taken is not None:
                self.position += 1
                return self.position - 1, component_index, *taken
        return None

    def _next_pass(self, component_index: int) -> bool:
        """Restart an exhausted component ("cycle") or retire it ("exhaust"); whether it can be drawn again."""
        if self.mixture.stopping_strategy == "exhaust":
            self.active[component_index] = False
            self._cumulative = None
            return False
        self.passes[component_index] += 1
        self.offsets[component_index] = 0
        self._orders[component_index] = self._iterators[component_index] = None
        return True

    def _take(self, component_index: int) -> tuple[int, Any] | None:
        component, offset = self.mixture.components[component_index], self.offsets[component_index]
        if component.is_map_style:
            if offset == len(component.dataset) and not self._next_pass(component_index):
                return None
            if self._orders[component_index] is None:
                seed = [self.mixture.seed, self.mixture.epoch, _ORDER_STREAM, component_index]
                rng = np.random.default_rng([*seed, self.passes[component_index]])
                self._orders[component_index] = rng.permutation(len(component.dataset))
            self.offsets[component_index] += 1
            return int(self._orders[component_index][self.offsets[component_index] - 1]), _NOT_READ
        if self._iterators[component_index] is None:
            # `iter(batch_size=1)`, not `__iter__`, which keeps only this DataLoader worker's shards; the
            # component's set_epoch is never called (its epoch is shared by all workers).
            dataset = component.dataset
            if isinstance(dataset, datasets.IterableDataset):
                iterator = ({key: values[0] for key, values in batch.items()} for batch in dataset.iter(batch_size=1))
            else:
                iterator = iter(dataset)
            _consume(iterator, offset)
            self._iterators[component_index] = iterator
        try:
            element = next(self._iterators[component_index])
        except StopIteration:
            if offset == 0:
                raise ValueError(f"Iterable mixture component {component.name!r} yielded no samples.") from None
            return self._take(component_index) if self._next_pass(component_index) else None
        except Exception as error:
            raise InvalidSampleError(
                f"Reading sample {offset} (pass {self.passes[component_index]}) of iterable mixture component "
                f"{component.name!r} failed: {error!r}. Errors raised by an iterator end it, so they cannot be "
                "skipped: fix the data source, or decode lazily (datasets.Audio(decode=False))."
            ) from error
        self.offsets[component_index] += 1
        return offset, element


@dataclass
class _Progress:
    """The live position of a running iteration, read by `MixtureDataset.state_dict`."""

    shard: tuple[int, int]  # (index, count) of this process among ranks x DataLoader workers
    worker_rotation: int  # this worker plays worker (id + rotation) % num_workers, see `resume_from_consumed`
    cursor: _MixtureCursor
    samples_yielded: int
    buffer_index: int = 0
    buffer_offset: int = 0
    batch_position: int = 0  # batches formed before the current buffer (global ones with a token budget)
    buffer_start: dict[str, Any] = field(default_factory=dict)  # cursor snapshot and skip counts when the buffer began


class MixtureDataset(IterableDataset):
    """A task/language mixture as a torch `IterableDataset`, deterministic for `seed` and `epoch` (docs/batching.md).

    Each epoch is one global sequence: at each position a component is drawn with `mixture_probabilities` and its
    next sample taken (map-style components in a fresh permutation per pass). `stopping_strategy` "cycle" restarts
    an exhausted component (endless: set `max_steps`); "exhaust" retires it, so the epoch yields every sample once.
    Position k goes to rank `k % world_size` (from `torch.distributed` unless given; `rank=0, world_size=1` when the
    Trainer shards) and to its DataLoader worker `(k // world_size) % workers`. With `token_budget` it yields
    batches, global ones dealt to processes in turn (in "exhaust" mode the last `total % world_size` are dropped).

    Samples failing `validate` raise `InvalidSampleError`, or with `skip_invalid=True` are counted in `skipped`;
    a `DroppedSample` is always skipped and counted. `state_dict()` / `load_state_dict()` (torchdata's `Stateful`)
    restore this process's exact position; `resume_from_consumed` / `resume_after_batches` replay the sequence from
    a count of consumed items. Resume with the same components, seed, world size, workers and batch size.
    """

    def __init__(
        self,
        components: Sequence[MixtureComponent],
        *,
        temperature: float = 1.0,
        size_proportional: bool = True,
        seed: int = 0,
        stopping_strategy: Literal["cycle", "exhaust"] = "cycle",
        validate: Callable[[Mapping[str, Any]], None] = validate_sample,
        skip_invalid: bool = False,
        length_grouping: LengthGrouping | None = None,
        token_budget: TokenBudget | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        names = [component.name for component in components]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Mixture component names must be unique; repeated: {duplicates}.")
        if stopping_strategy not in ("cycle", "exhaust"):
            raise ValueError(f"stopping_strategy must be 'cycle' or 'exhaust', got {stopping_strategy!r}.")
        if length_grouping is not None and token_budget is not None:
            raise ValueError(
                "Pass length_grouping (fixed-size batches) or token_budget (budget-filled batches), not both."
            )
        if not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ValueError(
                f"Pass both rank and world_size with 0 <= rank < world_size, or neither; got {rank}, {world_size}."
            )
        self.components = list(components)
        self.temperature, self.seed, self.stopping_strategy = temperature, seed, stopping_strategy
        self.validate, self.skip_invalid = validate, skip_invalid
        self.length_grouping, self.token_budget = length_grouping, token_budget
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skipped: Counter[str] = Counter()
        self.oversized: Counter[str] = Counter()
        self._probabilities = mixture_probabilities(self.components, temperature, size_proportional)
        self._pending_state: dict[str, Any] | None = None
        self._pending_consumed: tuple[int, int] | None = None
        self._progress: _Progress | None = None

    @property
    def probabilities(self) -> dict[str, float]:
        """Sampling probability per component name."""
        return {component.name: float(p) for component, p in zip(self.components, self._probabilities)}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's sequence (called by the Trainer/accelerate); a new epoch starts from its beginning."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._pending_state = self._pending_consumed = None

    # -- resuming ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's position: the running (or last) iteration's, else the loaded state, else the epoch's start."""
        progress = self._progress
        if progress is None and self._pending_state is not None:
            return dict(self._pending_state)
        state = self._epoch_start()
        if progress is not None:
            state.update(shard=list(progress.shard), worker_rotation=progress.worker_rotation,
                         samples_yielded=progress.samples_yielded, buffer_index=progress.buffer_index,
                         buffer_offset=progress.buffer_offset, cursor=progress.cursor.snapshot())
            if self.length_grouping is not None or self.token_budget is not None:  # resuming refills the buffer
                start = progress.buffer_start
                state.update(cursor=start["cursor"], skipped=start["skipped"], batch_position=progress.batch_position)
        return state

    def _epoch_start(self) -> dict[str, Any]:
        """The state of the epoch's start, for any process (shard and cursor None)."""
        return {"format": _STATE_FORMAT, "mixture": self._fingerprint(), "epoch": self.epoch, "shard": None,
                "worker_rotation": 0, "cursor": None, "skipped": dict(self.skipped), "samples_yielded": 0,
                "buffer_index": 0, "buffer_offset": 0, "batch_position": 0}

    def _fingerprint(self) -> dict[str, Any]:
        """What fixes the sequence: a state only fits a mixture with the same fingerprint."""
        return {
            "seed": self.seed,
            "components": [component.name for component in self.components],
            "probabilities": [float(p) for p in self._probabilities],
            "stopping_strategy": self.stopping_strategy,
            "length_grouping": _settings(self.length_grouping),
            "token_budget": _settings(self.token_budget),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict()` on the next iteration, exactly where it stopped."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"The state has format {state.get('format')!r} (saved by another release of part-speech) but this "
                f"MixtureDataset reads format {_STATE_FORMAT}; restart the epoch, or resume by count with "
                "resume_after_batches()."
            )
        fingerprint = self._fingerprint()
        differences = sorted(key for key in fingerprint if state["mixture"].get(key) != fingerprint[key])
        if differences:
            raise ValueError(
                f"The state belongs to a different mixture (differs in {differences}: {state['mixture']} vs "
                f"{fingerprint}); resume with the same components, weights, temperature, seed, stopping_strategy and "
                "length_grouping."
            )
        self.epoch = state["epoch"]
        self.skipped = Counter(state["skipped"])
        self._pending_state, self._pending_consumed, self._progress = dict(state), None, None

    def resume_from_consumed(self, samples_consumed: int, *, batch_size: int = 1, epoch: int | None = None) -> None:
        """Continue after `samples_consumed` items of `epoch` (default: the current one) were taken by a DataLoader
        with `batch_size` over this dataset in this process. The next iteration replays the sequence (reading only
        this process's samples) up to there; each DataLoader worker skips the batches it produced, the DataLoader
        taking batches from its workers in turn."""
        if samples_consumed < 0 or batch_size < 1:
            raise ValueError(
                f"Need samples_consumed >= 0 and batch_size >= 1, got {samples_consumed} and {batch_size}."
            )
        self.set_epoch(self.epoch if epoch is None else epoch)
        self._pending_state, self._pending_consumed, self._progress = None, (samples_consumed, batch_size), None

    def resume_after_batches(
        self, batches: int, *, per_device_batch_size: int = 1, world_size: int = 1, epoch: int | None = None
    ) -> None:
        """Continue after every rank took `batches` DataLoader batches of `per_device_batch_size` items (1 with a
        token budget) from this dataset, sharded over `world_size` ranks by accelerate's `IterableDatasetShard` (as
        the Trainer does with `rank=0, world_size=1` here), e.g. `global_step * gradient_accumulation_steps`."""
        items = per_device_batch_size * world_size
        self.resume_from_consumed(batches * items, batch_size=items, epoch=epoch)

    def __getstate__(self) -> dict[str, Any]:
        # A running iteration stays in its process; copies (DataLoader workers) start from the pending state.
        return {**self.__dict__, "_progress": None}

    # -- iteration ---------------------------------------------------------------------------------------

    def _process(self) -> tuple[int, int, int, int]:
        """(rank, world size, DataLoader worker id, number of workers) of the calling process."""
        if self.world_size is not None:
            rank, world_size = self.rank, self.world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
        worker = get_worker_info()
        return (rank, world_size, worker.id, worker.num_workers) if worker is not None else (rank, world_size, 0, 1)

    def _record_skip(self, component: MixtureComponent, index: int, error: Exception) -> None:
        key = f"{component.name} ({error.reason})" if isinstance(error, DroppedSample) else component.name
        self.skipped[key] += 1
        if self.skipped[key] <= _MAX_LOGGED_SKIPS:
            what = "Dropping sample" if isinstance(error, DroppedSample) else "Skipping invalid sample"
            logger.warning(f"{what} {index} of mixture component {component.name!r}: {error!r}")
        if self.skipped[key] == _MAX_LOGGED_SKIPS:
            logger.warning(f"Further invalid samples of {component.name!r} are skipped without logging; see `skipped`.")

    def _own_samples(self, cursor: _MixtureCursor, shard: tuple[int, int]) -> Iterator[dict[str, Any]]:
        """The labelled, validated samples of the sequence positions of process `shard[0]` of `shard[1]`."""
        while (drawn := cursor.draw()) is not None:
            position, component_index, index, element = drawn
            if position % shard[1] != shard[0]:
                continue
            component = self.components[component_index]
            try:
                sample = dict(component.dataset[index] if element is _NOT_READ else element)
                for key in ("task", "source_language", "target_language"):
                    declared = getattr(component, key)
                    if sample.setdefault(key, declared) != declared:
                        raise ValueError(
                            f"the sample has {key}={sample[key]!r} but its component declares {declared!r}"
                        )
                self.validate(sample)
            except Exception as error:
                if not (self.skip_invalid or isinstance(error, DroppedSample)):
                    raise InvalidSampleError(
                        f"Invalid sample {index} of mixture component {component.name!r} ({component.task}, "
                        f"{component.source_language}->{component.target_language}): {error!r}. Fix or filter it, or "
                        "pass skip_invalid=True to MixtureDataset to skip and count invalid samples."
                    ) from error
                self._record_skip(component, index, error)
                continue
            yield sample

    def _batches(self, progress: _Progress) -> Iterator[dict[str, Any] | list[dict[str, Any]]]:
        """This process's items from buffers of consecutive samples, each cut into batches (`make_batches`): the
        samples of fixed-size batches (length grouping, from this process's own samples) or whole budget batches.
        Budget batches are formed from all samples, the same in every process, and global batch `b` goes to process
        `b % processes`; the stream's last `total % world_size` are dropped (logged). `progress.buffer_start` holds
        where the current buffer began (cursor and skip counts) and `progress.buffer_offset` how many items it
        yielded, so a resumed iteration refills the buffer and skips them."""
        budget = self.token_budget
        batching = budget or self.length_grouping
        world_size = self._process()[1] if budget else 1
        read, dealt = ((0, 1), progress.shard) if budget else (progress.shard, (0, 1))
        samples = self._own_samples(progress.cursor, read)
        order_key = [] if budget else [progress.shard[0]]  # length grouping: each process its own batch order

        def snapshot() -> dict[str, Any]:
            return {"cursor": progress.cursor.snapshot(), "skipped": dict(self.skipped)}

        start, peeked = snapshot(), []
        while True:
            progress.buffer_start, progress.buffer_offset = start, 0
            buffer = peeked + list(islice(samples, batching.buffer_size - len(peeked)))
            if not buffer:
                return
            start = snapshot()  # where the next buffer begins
            peeked = list(islice(samples, 1))  # none: this buffer is the stream's last
            rng = np.random.default_rng([self.seed, self.epoch, _BATCH_ORDER_STREAM, *order_key, progress.buffer_index])
            batches = batching.make_batches(buffer, rng)
            extra = (progress.batch_position + len(batches)) % world_size
            if not peeked and extra:
                dropped, batches = batches[len(batches) - extra :], batches[: len(batches) - extra]
                if dealt[0] == 0:
                    logger.warning(
                        f"The mixture ended: dropping its last {len(dropped)} batches ({sum(map(len, dropped))} "
                        f"samples) so that all {world_size} ranks run the same number of batches."
                    )
            for position, indices in enumerate(batches, start=progress.batch_position):
                if position % dealt[1] != dealt[0]:
                    continue
                batch = [buffer[index] for index in indices]
                if budget and len(batch) == 1 and not budget.fits(1, *(cost := budget.costs(batch[0]))):
                    self._record_oversized(batch[0], cost)
                for item in [batch] if budget else batch:
                    progress.buffer_offset += 1
                    yield item
            progress.batch_position += len(batches)
            progress.buffer_index += 1

    def _record_oversized(self, sample: Mapping[str, Any], cost: tuple[int, float]) -> None:
        name = f"{sample['task']}_{sample['source_language']}_{sample['target_language']}"
        self.oversized[name] += 1
        if self.oversized[name] <= _MAX_LOGGED_SKIPS:
            logger.warning(
                f"A {name} sample ({cost[0]} LLM positions, {cost[1]:.1f} s) exceeds the token budget on its own "
                f"({self.token_budget.max_tokens} positions, {self.token_budget.max_audio_seconds} s): it forms a "
                "batch of its own. Raise the budget or filter such samples if they do not fit in memory."
            )

    def __iter__(self) -> Iterator[dict[str, Any] | list[dict[str, Any]]]:
        rank, world_size, worker_id, num_workers = self._process()
        state, consumed = self._pending_state or self._epoch_start(), self._pending_consumed
        self._pending_state = self._pending_consumed = None
        rotation = state["worker_rotation"]
        if consumed is not None:
            # The DataLoader restarts its round-robin at worker 0: rotate roles so batches keep their order.
            rotation = consumed[0] // consumed[1] % num_workers
        role = (worker_id + rotation) % num_workers
        shard = (rank + world_size * role, world_size * num_workers)
        if state["shard"] is not None and tuple(state["shard"]) != shard:
            raise ValueError(
                f"The loaded state was saved by process {state['shard'][0]} of {state['shard'][1]} (ranks x "
                f"DataLoader workers) but this is process {shard[0]} of {shard[1]}; resume with the same world size "
                "and num_workers."
            )
        skip = state["buffer_offset"]  # a refilled buffer replays the items it yielded (counted again below)
        cursor = _MixtureCursor(self, state["cursor"])
        progress = _Progress(shard, rotation, cursor, state["samples_yielded"] - skip, state["buffer_index"],
                             batch_position=state["batch_position"])
        if consumed is not None:
            # How many of the consumed items worker `role` produced: whole batches from the workers in turn.
            full_batches, remainder = divmod(consumed[0], consumed[1])
            skip = len(range(role, full_batches, num_workers)) * consumed[1]
            skip += remainder if full_batches % num_workers == role else 0
        self._progress = progress
        batched = self.length_grouping is not None or self.token_budget is not None
        samples = self._batches(progress) if batched else self._own_samples(cursor, shard)
        _consume(samples, skip)
        progress.samples_yielded += skip
        for sample in samples:
            progress.samples_yielded += 1
            yield sample
