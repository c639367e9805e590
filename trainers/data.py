"""Training data for PART: mixtures of speech and text corpora by task and language, sampled with a
temperature, deterministic for a seed, resumable, sharded across ranks and DataLoader workers, and
optionally grouped into batches of similar length or into batches filled up to a token budget.

A sample is a dict with `task` ("asr", "s2tt" or "mt"), `source_language`, `target_language` (ISO 639
codes), `text` (the target text), and `audio` (path, array or `datasets.Audio(decode=False)` dict) for
speech tasks or `source_text` for "mt". Datasets may omit the task and language keys: each
`MixtureComponent` declares them once and the mixture adds them to every sample.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, TypeVar

import datasets
import numpy as np
import soundfile
import torch
from torch.utils.data import IterableDataset, get_worker_info
from transformers.utils import logging

from modeling_part.processing_part import SPEECH_TASKS, TASKS


logger = logging.get_logger(__name__)

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------
# Sample format and validation
# ---------------------------------------------------------------------------------------------------------

SAMPLE_LABEL_KEYS = ("task", "source_language", "target_language")
"""The keys a mixture component sets on each of its samples."""


class InvalidSampleError(ValueError):
    """A sample could not be read or failed validation; the message names its component and index."""


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


class DroppedSample(ValueError):
    """Raised by a validator to drop a sample on purpose: the mixture skips it whatever `skip_invalid` says and
    counts it in `skipped` under `"<component> (<reason>)"`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def audio_seconds(sample: Mapping[str, Any]) -> float | None:
    """A speech sample's duration without decoding its audio: a decoded array's length, else the file header
    (`soundfile.info` of the path or bytes), else its `duration` column; None when none of these is readable."""
    audio = sample.get("audio")
    if isinstance(audio, Mapping) and audio.get("array") is not None and audio.get("sampling_rate"):
        return len(audio["array"]) / audio["sampling_rate"]
    source = audio.get("bytes") or audio.get("path") if isinstance(audio, Mapping) else audio
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike, io.BytesIO)):
        try:
            return soundfile.info(source).duration
        except (soundfile.LibsndfileError, OSError, RuntimeError):
            pass
    return None if sample.get("duration") is None else float(sample["duration"])


@dataclass(frozen=True)
class AudioLengthValidator:
    """A sample validator (for `MixtureDataset(validate=...)`): `validate`, then a check that no speech sample is
    longer than `max_audio_seconds` (the processor's `effective_max_audio_seconds`), so nothing is ever truncated.
    A longer sample is an error naming its component and index, or with `drop=True` is dropped and counted per
    component in the mixture's `skipped` as `"<component> (audio over <max> s)"`. Samples whose length cannot be
    read cheaply (see `audio_seconds`) pass; the processor refuses them when it decodes them."""

    max_audio_seconds: float
    drop: bool = False
    validate: Callable[[Mapping[str, Any]], None] = validate_sample

    def __call__(self, sample: Mapping[str, Any]) -> None:
        self.validate(sample)
        if sample.get("task") not in SPEECH_TASKS:
            return
        seconds = audio_seconds(sample)
        if seconds is not None and seconds > self.max_audio_seconds:
            message = f"audio of {seconds:.1f} s is longer than the {self.max_audio_seconds} s the model takes"
            if self.drop:
                raise DroppedSample(f"{message} (dropped: drop_long_audio)", f"audio over {self.max_audio_seconds:g} s")
            raise ValueError(
                f"{message} (processor.max_audio_seconds); split such recordings, or drop them explicitly with "
                "drop_long_audio=True (PartTrainingArguments / --drop_long_audio)"
            )


# ---------------------------------------------------------------------------------------------------------
# Length grouping
# ---------------------------------------------------------------------------------------------------------


def sample_length(sample: Mapping[str, Any]) -> float:
    """Default length for grouping: `duration` (seconds) if the sample has one, else the duration of a decoded
    audio array, else the number of characters of `source_text` ("mt") or `text`.

    Seconds and characters are different units: give all speech samples of a mixture a `duration` or none,
    or pass your own `length_fn`.
    """
    if sample.get("duration") is not None:
        return float(sample["duration"])
    audio = sample.get("audio")
    if isinstance(audio, Mapping) and audio.get("array") is not None and audio.get("sampling_rate"):
        return len(audio["array"]) / audio["sampling_rate"]
    return float(len(sample.get("source_text") or sample.get("text") or ""))


def sort_into_batches(
    samples: Sequence[T], batch_size: int, rng: np.random.Generator, length_fn: Callable[[T], float] = sample_length
) -> list[list[T]]:
    """Sort `samples` by length (stable), cut them into batches of `batch_size` and shuffle the batch order."""
    order = sorted(range(len(samples)), key=lambda index: length_fn(samples[index]))
    batches = [
        [samples[index] for index in order[start : start + batch_size]] for start in range(0, len(order), batch_size)
    ]
    return [batches[index] for index in rng.permutation(len(batches))]


@dataclass
class LengthGrouping:
    """Length grouping inside a `MixtureDataset`: each process buffers `buffer_batches * batch_size` of its
    samples and yields them as consecutive batches of similar length, in random batch order. Use the same
    `batch_size` for the DataLoader so its batches coincide with the groups."""

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


# ---------------------------------------------------------------------------------------------------------
# Token-budget batching
# ---------------------------------------------------------------------------------------------------------


def sample_seconds(sample: Mapping[str, Any]) -> float:
    """Audio seconds of a sample: its `duration`, else the length of a decoded array, else the header of its file
    (path or bytes, read with soundfile without decoding); 0 for "mt". Raises `ValueError` when none is known."""
    if sample.get("task") == "mt":
        return 0.0
    if sample.get("duration") is not None:
        return float(sample["duration"])
    audio = sample.get("audio")
    if isinstance(audio, Mapping) and audio.get("array") is not None and audio.get("sampling_rate"):
        return len(audio["array"]) / audio["sampling_rate"]
    source = audio.get("bytes") or audio.get("path") if isinstance(audio, Mapping) else audio
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike, io.BytesIO)):
        return float(soundfile.info(source).duration)
    raise ValueError(
        f"the duration of this {sample.get('task')!r} sample is unknown (audio {type(audio).__name__}); give the "
        "samples a 'duration' column (seconds), an audio path, or a decoded Audio dict"
    )


@dataclass
class TokenBudget:
    """Batches filled up to a budget instead of a fixed size, as FunASR `batch_type="token"`, Ultravox
    `dynamic_batch_seq_length` or Lhotse's duration buckets do.

    Each process reads `buffer_size` samples of the mixture, orders them by length (LLM positions when
    `max_tokens` is set, else audio seconds), optionally splits them into `num_buckets` buckets of equal counts,
    and cuts batches so that `batch size x longest sample` (the padded size) stays within every budget given.
    A sample larger than a budget on its own gets a batch of its own (and a logged warning): filter such samples
    (e.g. in `validate`) if they do not fit in memory.

    Args:
        max_tokens: LLM positions per batch (prompt + audio placeholders + target, padded), from `positions_fn`.
        max_audio_seconds: audio seconds per batch, padded (batch size x longest clip), from `seconds_fn`.
        max_batch_size: optional cap on samples per batch (short "mt" samples otherwise fill large batches).
        num_buckets: 0: batches of neighbours in the sorted buffer (least padding). k > 0: k length buckets of
            equal counts, samples in draw order inside a bucket (more varied batches, more padding).
        buffer_size: samples per buffer; larger buffers pad less.
        positions_fn: sample -> LLM positions; `PartTrainer` passes `processor_positions(processor)`.
        seconds_fn: sample -> audio seconds (default `sample_seconds`).
    """

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

    def make_batches(self, costs: Sequence[tuple[int, float]], rng: np.random.Generator) -> list[list[int]]:
        """Indices of `costs` cut into batches within the budget, in random batch order."""
        key = (lambda i: (costs[i][0], costs[i][1])) if self.max_tokens is not None else (lambda i: costs[i][1])
        order = sorted(range(len(costs)), key=key)
        buckets = [order]
        if self.num_buckets > 0:
            split = np.array_split(np.array(order, dtype=np.int64), self.num_buckets)
            buckets = [sorted(bucket.tolist()) for bucket in split]  # draw order inside a bucket
        batches: list[list[int]] = []
        for bucket in buckets:
            batch: list[int] = []
            longest = (0, 0.0)
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

    def fingerprint(self) -> list[Any]:
        return [self.max_tokens, self.max_audio_seconds, self.max_batch_size, self.num_buckets, self.buffer_size]


def processor_positions(processor: Any) -> Callable[[Mapping[str, Any]], int]:
    """sample -> LLM positions (prompt + audio placeholders + target + EOS) as `processor` builds the training
    input; the audio's placeholder count comes from its duration (`sample_seconds`), so nothing is decoded."""
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


# ---------------------------------------------------------------------------------------------------------
# Mixture sampling
# ---------------------------------------------------------------------------------------------------------

# Tags that keep the random streams of one seed apart.
_CHOICE_STREAM, _ORDER_STREAM, _BATCH_ORDER_STREAM = 0, 1, 2
_MAX_LOGGED_SKIPS = 10  # per component and process; later skips are only counted
_NOT_READ = object()  # a map-style element that has not been fetched yet


def _is_map_style(dataset: Any) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


@dataclass
class MixtureComponent:
    """One corpus of a mixture, with the task and languages of all its samples.

    Args:
        name: unique name, used in errors, skip counts and states.
        dataset: map-style (`datasets.Dataset`, or anything with `__len__` and `__getitem__`) or iterable
            (`datasets.IterableDataset`, a torch `IterableDataset`, any re-iterable). Iterable datasets must
            yield the same full stream in every process: do not pre-split them by node or worker.
        task, source_language, target_language: set on every sample.
        weight: relative sampling weight (> 0), see `mixture_probabilities`.
        num_samples: size of an iterable dataset, if known (map-style sizes are read from `len`).

    Keep audio undecoded (`datasets.Audio(decode=False)`): the collator decodes what a batch needs, and
    iterable components are read by every process.
    """

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
        return _is_map_style(self.dataset)

    @property
    def size(self) -> int | None:
        """Number of samples: `len(dataset)` for map-style, `num_samples` (possibly None) for iterable."""
        return len(self.dataset) if self.is_map_style else self.num_samples


def mixture_probabilities(
    components: Sequence[MixtureComponent], temperature: float = 1.0, size_proportional: bool = True
) -> np.ndarray:
    """Probability of drawing each component at each step, by temperature sampling.

    With sizes (every component's `size` known and `size_proportional=True`): p_i ∝ (w_i · n_i)^(1/T),
    normalised; T = 1 is size-proportional sampling scaled by the weights, T > 1 flattens the mixture
    towards uniform (up-sampling small corpora), T -> 0 picks the largest. Without sizes (no component has
    one, or `size_proportional=False`): p_i ∝ w_i^(1/T). A mixture where only some sizes are known is
    rejected: give iterable components `num_samples` or pass `size_proportional=False`.
    """
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


def _consume(iterator: Iterator[Any], count: int) -> None:
    deque(islice(iterator, count), maxlen=0)


class _MixtureCursor:
    """Where one epoch's global sequence stands: the component-choice RNG, and each component's pass
    (how often it restarted) and offset (samples taken in this pass). Every process walks the same cursor."""

    def __init__(self, mixture: MixtureDataset, snapshot: Mapping[str, Any] | None) -> None:
        self.mixture = mixture
        count = len(mixture.components)
        self.rng = np.random.default_rng([mixture.seed, mixture.epoch, _CHOICE_STREAM])
        if snapshot is None:
            self.position, self.passes, self.offsets, self.active = 0, [0] * count, [0] * count, [True] * count
        else:
            self.rng.bit_generator.state = snapshot["rng"]
            self.position = snapshot["position"]
            self.passes, self.offsets, self.active = (
                list(snapshot["passes"]),
                list(snapshot["offsets"]),
                list(snapshot["active"]),
            )
        self._orders: list[np.ndarray | None] = [None] * count
        self._iterators: list[Iterator[Any] | None] = [None] * count
        self._cumulative: tuple[np.ndarray, np.ndarray] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "rng": self.rng.bit_generator.state,
            "passes": list(self.passes),
            "offsets": list(self.offsets),
            "active": list(self.active),
        }

    def draw(self) -> tuple[int, int, int, Any] | None:
        """Advance one global position: `(position, component index, index in component, element)`, where
        element is the read sample for iterable components and `_NOT_READ` for map-style ones; None at the end."""
        while any(self.active):
            component_index = self._choose()
            taken = self._take(component_index)
            if taken is not None:
                self.position += 1
                return self.position - 1, component_index, *taken
        return None

    def _choose(self) -> int:
        if self._cumulative is None:
            active = np.flatnonzero(self.active)
            probabilities = self.mixture._probabilities[active]
            self._cumulative = active, np.cumsum(probabilities) / probabilities.sum()
        active, cumulative = self._cumulative
        return int(active[min(np.searchsorted(cumulative, self.rng.random(), side="right"), len(active) - 1)])

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
        component = self.mixture.components[component_index]
        if component.is_map_style:
            if self.offsets[component_index] == len(component.dataset) and not self._next_pass(component_index):
                return None
            if self._orders[component_index] is None:
                rng = np.random.default_rng(
                    [
                        self.mixture.seed,
                        self.mixture.epoch,
                        _ORDER_STREAM,
                        component_index,
                        self.passes[component_index],
                    ]
                )
                self._orders[component_index] = rng.permutation(len(component.dataset))
            index = int(self._orders[component_index][self.offsets[component_index]])
            self.offsets[component_index] += 1
            return index, _NOT_READ
        if self._iterators[component_index] is None:
            self._iterators[component_index] = self.mixture._open_iterable(component_index)
            _consume(self._iterators[component_index], self.offsets[component_index])
        try:
            element = next(self._iterators[component_index])
        except StopIteration:
            if self.offsets[component_index] == 0:
                raise ValueError(f"Iterable mixture component {component.name!r} yielded no samples.") from None
            return self._take(component_index) if self._next_pass(component_index) else None
        except Exception as error:
            raise InvalidSampleError(
                f"Reading sample {self.offsets[component_index]} (pass {self.passes[component_index]}) of iterable "
                f"mixture component {component.name!r} failed: {error!r}. Errors raised by an iterator end it, so "
                "they cannot be skipped: fix the data source, or decode lazily (datasets.Audio(decode=False))."
            ) from error
        self.offsets[component_index] += 1
        return self.offsets[component_index] - 1, element


@dataclass
class _Progress:
    """The live position of a running iteration, read by `MixtureDataset.state_dict`."""

    shard: tuple[int, int]  # (index, count) of this process among ranks x DataLoader workers
    worker_rotation: int  # this worker plays worker (id + rotation) % num_workers, see `resume_from_consumed`
    cursor: _MixtureCursor
    samples_yielded: int
    buffer_index: int = 0
    buffer_offset: int = 0
    batch_position: int = 0  # token budget: global batches formed before the current buffer
    buffer_start: dict[str, Any] = field(default_factory=dict)  # cursor snapshot and skip counts when the buffer began


class MixtureDataset(IterableDataset):
    """A task/language mixture as a torch `IterableDataset`, deterministic for `seed` and `epoch`.

    The mixture defines one global sequence per epoch: at each position a component is drawn with
    `mixture_probabilities` and its next sample is taken. Map-style components are read without
    replacement in a shuffled order (a fresh permutation per pass and epoch); iterable components in their
    own order, the same in every pass and epoch (shuffle them beforehand, e.g. `IterableDataset.shuffle`).

    `stopping_strategy`:
        "cycle" (default): an exhausted component restarts with a new pass; the stream is endless, so set the
            Trainer's `max_steps`. Sampling frequencies equal the probabilities.
        "exhaust": an exhausted component is retired and the others' probabilities are renormalised; the epoch
            ends when all are exhausted, after every sample was yielded exactly once (less skipped ones).

    Sharding: global position k goes to rank `k % world_size`; within a rank, DataLoader worker w of N takes
    the rank's positions whose `(k // world_size) % N == w`. Every process walks the whole sequence but reads
    only its own map-style samples; iterable components are read by every process (others' samples are
    dropped unvalidated). Rank and world size come from `torch.distributed` when initialised, else 0 and 1;
    pass `rank=0, world_size=1` when something else shards the stream already (accelerate's
    `dispatch_batches` or `IterableDatasetShard`, which the Trainer applies to iterable datasets).

    Token budget (`token_budget=TokenBudget(...)`): the dataset yields batches (lists of samples) filled up to
    the budget instead of samples; use it with `DataLoader(batch_size=None)`, or `batch_size=1` and a collator
    that unwraps the list (what `PartTrainer` does, so accelerate deals whole batches to ranks). Every process
    reads all samples and forms the same global batches; batch b goes to process `b % (world_size x workers)`
    (rank `b % world_size`). The `resume_from_consumed` counts and `samples_yielded` are then in batches.

    Invalid samples: each own sample is labelled with its component's task and languages and passed to
    `validate(sample)` (default `validate_sample`); reading or validation errors raise `InvalidSampleError`
    naming the component and index, or with `skip_invalid=True` are counted in `skipped` (per component name)
    and logged. A validator that raises `DroppedSample` (e.g. `AudioLengthValidator(..., drop=True)`) drops a
    sample on purpose: it is skipped in any case and counted as `"<component> (<reason>)"`.
    With skips, ranks may yield slightly different numbers of samples in "exhaust" mode.

    Resuming: `state_dict()` / `load_state_dict()` save and restore this process's exact position (global
    position, choice RNG state, component passes and offsets, samples yielded, skip counts, length-grouping
    or token-budget buffer). They follow torchdata's `Stateful` protocol, so `StatefulDataLoader` saves each
    worker's state.
    Without it, `resume_from_consumed` replays the sequence from a count of consumed samples.
    Resume with the same components, seed, world size, number of workers and batch size.
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
        self.temperature = temperature
        self.seed = seed
        self.stopping_strategy = stopping_strategy
        self.validate = validate
        self.skip_invalid = skip_invalid
        self.length_grouping = length_grouping
        self.token_budget = token_budget
        self.oversized: Counter[str] = Counter()
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skipped: Counter[str] = Counter()
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
        """This process's position: where the running (or last) iteration stands, else the loaded state, else
        the start of the current epoch."""
        progress = self._progress
        if progress is None and self._pending_state is not None:
            return dict(self._pending_state)
        state = {
            "mixture": self._fingerprint(),
            "epoch": self.epoch,
            "shard": None,  # None (with cursor None): the epoch's start, valid for any process
            "worker_rotation": 0,
            "cursor": None,
            "skipped": dict(self.skipped),
            "samples_yielded": 0,
            "buffer_index": 0,
            "buffer_offset": 0,
            "batch_position": 0,
        }
        if progress is not None:
            state.update(
                shard=list(progress.shard),
                worker_rotation=progress.worker_rotation,
                samples_yielded=progress.samples_yielded,
                buffer_index=progress.buffer_index,
                buffer_offset=progress.buffer_offset,
            )
            if self.length_grouping is None and self.token_budget is None:
                state["cursor"] = progress.cursor.snapshot()
            else:  # resuming refills the current buffer from its start
                start = progress.buffer_start
                state.update(cursor=start["cursor"], skipped=start["skipped"], batch_position=progress.batch_position)
        return state

    def _fingerprint(self) -> dict[str, Any]:
        """What fixes the sequence: a state only fits a mixture with the same fingerprint."""
        grouping = self.length_grouping
        return {
            "seed": self.seed,
            "components": [component.name for component in self.components],
            "probabilities": [float(p) for p in self._probabilities],
            "stopping_strategy": self.stopping_strategy,
            "length_grouping": None if grouping is None else [grouping.batch_size, grouping.buffer_size],
            "token_budget": None if self.token_budget is None else self.token_budget.fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state_dict()` on the next iteration, exactly where it stopped."""
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
        """Continue after `samples_consumed` samples of `epoch` (default: the current one) were taken from a
        DataLoader with `batch_size` over this dataset in this process, e.g. on each rank
        `global_step * gradient_accumulation_steps * per_device_train_batch_size`. The next iteration replays
        the sequence (reading this process's samples) up to that point. Each DataLoader worker skips the
        batches it produced, assuming the DataLoader's in-order round-robin over workers."""
        if samples_consumed < 0 or batch_size < 1:
            raise ValueError(
                f"Need samples_consumed >= 0 and batch_size >= 1, got {samples_consumed} and {batch_size}."
            )
        self.set_epoch(self.epoch if epoch is None else epoch)
        self._pending_state, self._pending_consumed, self._progress = None, (samples_consumed, batch_size), None

    def resume_after_batches(
        self, batches: int, *, per_device_batch_size: int = 1, world_size: int = 1, epoch: int | None = None
    ) -> None:
        """Continue after every rank took `batches` DataLoader batches from this dataset, sharded over `world_size`
        ranks by accelerate's `IterableDatasetShard` (what the Trainer does with `rank=0, world_size=1` here), e.g.
        `global_step * gradient_accumulation_steps`. `per_device_batch_size`: the DataLoader's batch size (1 with a
        token budget, whose items are whole batches). Each DataLoader batch took `per_device_batch_size *
        world_size` items of this dataset's sequence, which `resume_from_consumed` replays."""
        items = per_device_batch_size * world_size
        self.resume_from_consumed(batches * items, batch_size=items, epoch=epoch)

    def __getstate__(self) -> dict[str, Any]:
        # A running iteration (open iterators) stays in its process; copies, e.g. DataLoader workers, start from
        # the pending state.
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

    def _open_iterable(self, component_index: int) -> Iterator[Any]:
        # The component's own set_epoch is never called: datasets.IterableDataset keeps its epoch in memory shared
        # by all DataLoader workers, so calls from several workers would race.
        dataset = self.components[component_index].dataset
        if isinstance(dataset, datasets.IterableDataset):
            # `iter(batch_size=1)` rather than `__iter__`, which would keep only this DataLoader worker's shards.
            return ({key: values[0] for key, values in batch.items()} for batch in dataset.iter(batch_size=1))
        return iter(dataset)

    def _label(self, element: Any, component: MixtureComponent) -> dict[str, Any]:
        if not isinstance(element, Mapping):
            raise TypeError(f"samples must be dicts, got {type(element).__name__}")
        sample = dict(element)
        for key in SAMPLE_LABEL_KEYS:
            declared = getattr(component, key)
            if sample.setdefault(key, declared) != declared:
                raise ValueError(f"the sample has {key}={sample[key]!r} but its component declares {declared!r}")
        return sample

    def _record_skip(self, component: MixtureComponent, index: int, error: Exception) -> None:
        key = f"{component.name} ({error.reason})" if isinstance(error, DroppedSample) else component.name
        self.skipped[key] += 1
        count = self.skipped[key]
        if count <= _MAX_LOGGED_SKIPS:
            what = "Dropping sample" if isinstance(error, DroppedSample) else "Skipping invalid sample"
            logger.warning(f"{what} {index} of mixture component {component.name!r}: {error!r}")
        if count == _MAX_LOGGED_SKIPS:
            logger.warning(
                f"Further invalid samples of {component.name!r} are skipped without logging; see `skipped`."
            )

    def _own_samples(self, cursor: _MixtureCursor, shard: tuple[int, int]) -> Iterator[dict[str, Any]]:
        instance, num_instances = shard
        while (drawn := cursor.draw()) is not None:
            position, component_index, index, element = drawn
            if position % num_instances != instance:
                continue
            component = self.components[component_index]
            try:
                sample = self._label(component.dataset[index] if element is _NOT_READ else element, component)
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

    def _grouped_samples(self, progress: _Progress, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        grouping = self.length_grouping
        instance = progress.shard[0]
        while True:
            progress.buffer_start = {"cursor": progress.cursor.snapshot(), "skipped": dict(self.skipped)}
            progress.buffer_offset = 0
            buffer = list(islice(samples, grouping.buffer_size))
            if not buffer:
                return
            rng = np.random.default_rng([self.seed, self.epoch, _BATCH_ORDER_STREAM, instance, progress.buffer_index])
            for batch in sort_into_batches(buffer, grouping.batch_size, rng, grouping.length_fn):
                for sample in batch:
                    progress.buffer_offset += 1
                    yield sample
            progress.buffer_index += 1

    def _budget_batches(
        self, progress: _Progress, shard: tuple[int, int], resume_offset: int
    ) -> Iterator[list[dict[str, Any]]]:
        """Token-budget batches: every process forms the same global batches from all samples and keeps batch
        `b` when `b % processes == its index`. Where the stream ends, the last `total % world_size` batches are
        dropped (logged), so every rank yields as many batches."""
        budget, cursor = self.token_budget, progress.cursor
        instance, num_instances = shard
        world_size = self._process()[1]
        samples = self._own_samples(cursor, (0, 1))
        start = {"cursor": cursor.snapshot(), "skipped": dict(self.skipped)}
        peeked: list[dict[str, Any]] = []
        while True:
            progress.buffer_start, progress.buffer_offset = start, 0
            buffer = peeked + list(islice(samples, budget.buffer_size - len(peeked)))
            if not buffer:
                return
            start = {"cursor": cursor.snapshot(), "skipped": dict(self.skipped)}  # where the next buffer begins
            peeked = list(islice(samples, 1))  # nothing left: this is the last buffer
            costs = [budget.costs(sample) for sample in buffer]
            rng = np.random.default_rng([self.seed, self.epoch, _BATCH_ORDER_STREAM, progress.buffer_index])
            batches = budget.make_batches(costs, rng)
            if not peeked and world_size > 1 and (progress.batch_position + len(batches)) % world_size:
                dropped = batches[len(batches) - (progress.batch_position + len(batches)) % world_size :]
                batches = batches[: len(batches) - len(dropped)]
                if instance == 0:
                    logger.warning(
                        f"The mixture ended: dropping its last {len(dropped)} batches ({sum(map(len, dropped))} "
                        f"samples) so that all {world_size} ranks run the same number of batches."
                    )
            for offset, batch in enumerate(batches):
                if offset < resume_offset:
                    continue
                progress.buffer_offset = offset + 1
                if (progress.batch_position + offset) % num_instances == instance:
                    for index in batch:
                        if len(batch) == 1 and not budget.fits(1, *costs[index]):
                            self._record_oversized(buffer[index], costs[index])
                    yield [buffer[index] for index in batch]
            resume_offset = 0
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
        state, consumed = self._pending_state, self._pending_consumed
        self._pending_state = self._pending_consumed = None
        rotation = 0 if state is None else state["worker_rotation"]
        if consumed is not None:
            # The DataLoader restarts its round-robin at worker 0: rotate roles so batches keep their order.
            rotation = consumed[0] // consumed[1] % num_workers
        role = (worker_id + rotation) % num_workers
        shard = (rank + world_size * role, world_size * num_workers)
        if state is not None and state["shard"] is not None and tuple(state["shard"]) != shard:
            raise ValueError(
                f"The loaded state was saved by process {state['shard'][0]} of {state['shard'][1]} (ranks x "
                f"DataLoader workers) but this is process {shard[0]} of {shard[1]}; resume with the same world size "
                "and num_workers."
            )
        cursor = _MixtureCursor(self, None if state is None else state["cursor"])
        progress = _Progress(shard, rotation, cursor, samples_yielded=0 if state is None else state["samples_yielded"])
        skip = 0
        resume_offset = 0
        if state is not None and self.length_grouping is not None:
            progress.buffer_index, skip = state["buffer_index"], state["buffer_offset"]
            progress.samples_yielded -= skip  # the replayed part of the buffer is counted again below
        if state is not None and self.token_budget is not None:
            progress.buffer_index, resume_offset = state["buffer_index"], state["buffer_offset"]
            progress.batch_position = state["batch_position"]
        if consumed is not None:
            skip = self._samples_produced_by(role, num_workers, *consumed)
        self._progress = progress
        if self.token_budget is not None:
            samples = self._budget_batches(progress, shard, resume_offset)
        else:
            samples = self._own_samples(cursor, shard)
            if self.length_grouping is not None:
                samples = self._grouped_samples(progress, samples)
        _consume(samples, skip)
        progress.samples_yielded += skip
        for sample in samples:
            progress.samples_yielded += 1
            yield sample

    @staticmethod
    def _samples_produced_by(role: int, num_workers: int, samples_consumed: int, batch_size: int) -> int:
        """How many of `samples_consumed` came from worker `role`: a DataLoader takes whole batches from its
        workers in turn, starting with worker 0."""
        full_batches, remainder = divmod(samples_consumed, batch_size)
        produced = len(range(role, full_batches, num_workers)) * batch_size
        return produced + (remainder if full_batches % num_workers == role else 0)
