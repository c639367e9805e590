"""Speech-to-text scores as in the PART paper, all in percent: WER per language (CER for zh, cmn, ja, ko, yue) on
Whisper-normalised text, counted corpus-wide as `jiwer` counts a list of sentences, and sacreBLEU per direction.
Truncating long hypotheses before WER/CER (`HypothesisCap`) is opt-in and reported under its own keys."""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import sacrebleu
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

from modeling_part.processing_part import TASKS


CER_LANGUAGES = frozenset({"zh", "cmn", "ja", "ko", "yue", "zho", "jpn", "kor"})
"""Languages scored by character error rate (ISO 639-1/639-3 base codes); all others use WER."""

ENGLISH_LANGUAGES = frozenset({"en", "eng"})

BLEU_TOKENIZERS = {"zh": "zh", "cmn": "zh", "yue": "zh", "zho": "zh", "ja": "char", "jpn": "char", "ko": "char",
                   "kor": "char"}
"""sacreBLEU tokenizer per target base code; others use "13a" (the paper's xx->en). Japanese and Korean use "char"
as "ja-mecab"/"ko-mecab" need `sacrebleu[ja]`/`sacrebleu[ko]`: pass `bleu_tokenizers={"ja": "ja-mecab"}` then."""

EVALUATE_METRICS_DIR = Path(__file__).resolve().parent / "evaluate_metrics"
"""Folder of the `evaluate` metric scripts ("part_wer", "part_bleu") wrapping this module."""

Normalizer = Callable[[str, str], str]
"""A text normaliser: `(text, language) -> normalised text`."""


def evaluate_metric_path(name: str) -> str:
    """Local path of a PART `evaluate` metric, for `evaluate.load(evaluate_metric_path("part_wer"))` (offline)."""
    if not (EVALUATE_METRICS_DIR / name / f"{name}.py").is_file():
        available = sorted(p.parent.name for p in EVALUATE_METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)
        raise ValueError(f"No PART evaluate metric named {name!r}; available: {available}.")
    return str(EVALUATE_METRICS_DIR / name)


def base_language(language: str) -> str:
    """The lower-case base code of a language tag: "zh-CN" -> "zh", "cmn_hans_cn" -> "cmn"."""
    return language.strip().lower().replace("_", "-").split("-")[0]


def uses_cer(language: str) -> bool:
    """Whether `language` is scored by character error rate (see `CER_LANGUAGES`)."""
    return base_language(language) in CER_LANGUAGES


class TextNormalizer:
    """Whisper's text normalisation before WER/CER: `BasicTextNormalizer` for every language (lower-case, no
    bracketed text, punctuation and symbols to spaces), and Whisper's `EnglishTextNormalizer` for English only when
    given its spelling map (Whisper's `normalizer.json`, as a dict or path, or `from_tokenizer`), which transformers
    does not ship."""

    def __init__(self, english_spelling_mapping: Mapping[str, str] | str | os.PathLike | None = None) -> None:
        if isinstance(english_spelling_mapping, (str, os.PathLike)):
            with open(english_spelling_mapping, encoding="utf-8") as handle:
                english_spelling_mapping = json.load(handle)
        self._basic, self._english = BasicTextNormalizer(), None
        if english_spelling_mapping is not None:
            self._english = EnglishTextNormalizer(dict(english_spelling_mapping))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TextNormalizer:
        """Use the English spelling map a Whisper tokenizer loaded from `normalizer.json`, if it has one."""
        return cls(getattr(tokenizer, "english_spelling_normalizer", None))

    @property
    def uses_english_normalizer(self) -> bool:
        """Whether English text goes through Whisper's `EnglishTextNormalizer`."""
        return self._english is not None

    def __call__(self, text: str, language: str) -> str:
        english = self._english is not None and base_language(language) in ENGLISH_LANGUAGES
        return (self._english if english else self._basic)(text).strip()


@dataclass(frozen=True)
class HypothesisCap:
    """Opt-in truncation of each hypothesis to `max(ratio * reference units, reference units + margin)` units before
    WER/CER, so one runaway output cannot dominate a corpus rate. Capped rates hide insertions and are not comparable
    with `jiwer` or published numbers, so they are reported under their own keys (`wer_capped_<lang>`)."""

    ratio: float = 2.0
    margin: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio >= 1:
            raise ValueError(f"HypothesisCap(ratio={self.ratio!r}): ratio must be a number >= 1 (e.g. 2.0).")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"HypothesisCap(margin={self.margin!r}): margin must be an int >= 0 (e.g. 10).")

    def limit(self, reference_length: int) -> int:
        """How many hypothesis units are kept for a reference of `reference_length` units."""
        return max(int(self.ratio * reference_length), reference_length + self.margin)

    def truncate(self, hypothesis_units: list[str], reference_length: int) -> list[str]:
        """The first `limit(reference_length)` units of a hypothesis."""
        return hypothesis_units[: self.limit(reference_length)]

    @classmethod
    def coerce(cls, value: HypothesisCap | Mapping[str, Any] | bool | None) -> HypothesisCap | None:
        """A cap from `None`/`False` (no cap, the default), `True` (the defaults), a `HypothesisCap` or a mapping
        `{"ratio": ..., "margin": ...}`."""
        if value is None or value is False or isinstance(value, cls):
            return value or None
        if value is True or (isinstance(value, Mapping) and set(value) <= {"ratio", "margin"}):
            return cls() if value is True else cls(**value)
        raise ValueError(
            f"hypothesis_cap={value!r}: pass None (no cap, the default), True (2 x reference, reference + 10 units), "
            "HypothesisCap(ratio=..., margin=...) or {'ratio': ..., 'margin': ...}."
        )


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level error counts of one language."""

    metric: str  # "wer" or "cer"
    errors: int  # substitutions + deletions + insertions
    reference_units: int  # words (WER) or characters (CER) in the normalised references
    num_samples: int
    hypothesis_cap: HypothesisCap | None = None  # the opt-in truncation applied before counting, if any
    num_capped: int = 0  # hypotheses `hypothesis_cap` truncated

    @property
    def name(self) -> str:
        """"wer"/"cer", or "wer_capped"/"cer_capped" when a `hypothesis_cap` was applied."""
        return f"{self.metric}_capped" if self.hypothesis_cap is not None else self.metric

    @property
    def value(self) -> float:
        """The error rate in percent; NaN when the references contain no units at all."""
        return 100.0 * self.errors / self.reference_units if self.reference_units else math.nan


def _check_lengths(**columns: Sequence[Any]) -> None:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"All inputs must have one entry per sample, got lengths {lengths}.")


def word_error_rate(
    predictions: Sequence[str],
    references: Sequence[str],
    languages: Sequence[str] | str,
    *,
    normalizer: Normalizer | None = None,
    hypothesis_cap: HypothesisCap | Mapping[str, Any] | bool | None = None,
) -> dict[str, ErrorRate]:
    """`{language: ErrorRate}`: corpus WER (CER for `CER_LANGUAGES`, on characters without spaces) per language of
    the normalised text, all edits over all reference units as `jiwer.process_words` counts them.

    `languages` is one per sample or one for all; `normalizer` defaults to `TextNormalizer()` (`lambda t, _: t`
    scores raw text); `hypothesis_cap` (see `HypothesisCap.coerce`) truncates long hypotheses first.
    """
    if isinstance(languages, str):
        languages = [languages] * len(references)
    _check_lengths(predictions=predictions, references=references, languages=languages)
    normalizer = TextNormalizer() if normalizer is None else normalizer
    cap = HypothesisCap.coerce(hypothesis_cap)
    pairs: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    capped: Counter[str] = Counter()
    for prediction, reference, language in zip(predictions, references, languages):
        # CER: characters as space-separated units, so process_words counts them (and no spaces)
        reference_units, hypothesis_units = (
            list("".join(text.split())) if uses_cer(language) else text.split()
            for text in (normalizer(reference, language), normalizer(prediction, language))
        )
        kept_units = hypothesis_units if cap is None else cap.truncate(hypothesis_units, len(reference_units))
        capped[language] += len(kept_units) < len(hypothesis_units)
        pairs[language][0].append(" ".join(reference_units))
        pairs[language][1].append(" ".join(kept_units))
    results = {}
    for language, (language_references, language_hypotheses) in pairs.items():
        alignment = jiwer.process_words(language_references, language_hypotheses)
        results[language] = ErrorRate(
            metric="cer" if uses_cer(language) else "wer",
            errors=alignment.substitutions + alignment.deletions + alignment.insertions,
            reference_units=alignment.substitutions + alignment.deletions + alignment.hits,
            num_samples=len(language_references),
            hypothesis_cap=cap,
            num_capped=capped[language],
        )
    return results


def bleu_tokenizer(target_language: str, overrides: Mapping[str, str] | None = None) -> str:
    """The sacreBLEU tokenizer of a target language: `overrides[target_language]`, else `BLEU_TOKENIZERS` (by base
    code), else "13a"."""
    if overrides and target_language in overrides:
        return overrides[target_language]
    return BLEU_TOKENIZERS.get(base_language(target_language), "13a")


def bleu_by_direction(
    predictions: Sequence[str],
    references: Sequence[str],
    source_languages: Sequence[str],
    target_languages: Sequence[str],
    *,
    tokenizers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """sacreBLEU corpus BLEU per "src-tgt" direction on the raw text, tokenized by `bleu_tokenizer(target,
    tokenizers)`."""
    _check_lengths(predictions=predictions, references=references, source_languages=source_languages,
                   target_languages=target_languages)
    directions: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for prediction, reference, source, target in zip(predictions, references, source_languages, target_languages):
        directions[source, target][0].append(prediction.strip())
        directions[source, target][1].append(reference.strip())
    return {
        f"{source}-{target}": sacrebleu.corpus_bleu(
            hypotheses, [direction_references], tokenize=bleu_tokenizer(target, tokenizers)
        ).score
        for (source, target), (hypotheses, direction_references) in directions.items()
    }


def compute_speech_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    tasks: Sequence[str],
    source_languages: Sequence[str],
    target_languages: Sequence[str],
    *,
    normalizer: Normalizer | None = None,
    hypothesis_cap: HypothesisCap | Mapping[str, Any] | bool | None = None,
    bleu_tokenizers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """All PART metrics of a mixed evaluation set, as one flat dict (keys only for the tasks present).

    `wer_<lang>` / `cer_<lang>` per ASR language (ASR samples have source == target language) and `asr_avg_error`
    (their unweighted mean, the paper's "average WER"); `bleu_<src>-<tgt>` and `s2tt_avg_bleu` for S2TT;
    `mt_bleu_<src>-<tgt>` and `mt_avg_bleu` for text translation; sample counts `<task>_samples`. With
    `hypothesis_cap` (see `HypothesisCap.coerce`) also `wer_capped_<lang>` / `cer_capped_<lang>`,
    `asr_avg_error_capped`, `asr_capped_hypotheses` and the cap's `asr_hypothesis_cap_ratio` / `_margin`.
    """
    cap = HypothesisCap.coerce(hypothesis_cap)
    _check_lengths(predictions=predictions, references=references, tasks=tasks, source_languages=source_languages,
                   target_languages=target_languages)
    by_task: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
    for index, row in enumerate(zip(predictions, references, source_languages, target_languages)):
        if (task := tasks[index]) not in TASKS:
            raise ValueError(f"Sample {index} has task {task!r}; expected one of {TASKS}.")
        if task == "asr" and row[2] != row[3]:
            raise ValueError(
                f"Sample {index} has task 'asr' but source_language {row[2]!r} != target_language {row[3]!r}; "
                "ASR transcribes in the spoken language, so label it 's2tt' if it is a translation."
            )
        by_task[task].append(row)

    metrics: dict[str, float] = {}
    if asr := by_task.get("asr"):
        hypotheses, texts, _, languages = zip(*asr)
        for capping in (None, cap) if cap else (None,):
            rates = word_error_rate(hypotheses, texts, languages, normalizer=normalizer, hypothesis_cap=capping)
            metrics.update({f"{rate.name}_{language}": rate.value for language, rate in rates.items()})
            average = float(np.mean([rate.value for rate in rates.values()]))
            metrics["asr_avg_error_capped" if capping else "asr_avg_error"] = average
        metrics["asr_samples"] = len(asr)
        if cap is not None:
            metrics["asr_capped_hypotheses"] = sum(rate.num_capped for rate in rates.values())
            metrics["asr_hypothesis_cap_ratio"] = float(cap.ratio)
            metrics["asr_hypothesis_cap_margin"] = cap.margin
    for task, prefix in (("s2tt", "bleu"), ("mt", "mt_bleu")):
        if rows := by_task.get(task):
            scores = bleu_by_direction(*zip(*rows), tokenizers=bleu_tokenizers)
            metrics.update({f"{prefix}_{direction}": score for direction, score in scores.items()})
            metrics[f"{task}_avg_bleu"] = float(np.mean(list(scores.values())))
            metrics[f"{task}_samples"] = len(rows)
    return metrics
