"""`evaluate` metric for PART's ASR scores: Whisper-normalised WER per language (CER for zh, cmn, ja, ko, yue).

Load it offline with `evaluate.load("<path to trainers/evaluate_metrics/part_wer>")`. `evaluate` copies this
script to its module cache, so it imports the installed `trainers.metrics` instead of a relative module.
"""

import datasets
import evaluate

from trainers.metrics import (
    DEFAULT_MAX_HYPOTHESIS_MARGIN,
    DEFAULT_MAX_HYPOTHESIS_RATIO,
    TextNormalizer,
    compute_speech_metrics,
)


_DESCRIPTION = """
Corpus word error rate per language, in percent, after Whisper's text normalisation; character error rate
(spaces removed) for zh, cmn, ja, ko and yue. Hypotheses longer than max(2 x reference, reference + 10) units
are truncated first, so one runaway output cannot dominate. Also returns the unweighted mean over languages.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypotheses (str).
    references: list of reference transcripts (str).
    languages: list of language codes (str), one per sample.
    max_hypothesis_ratio: float or None (no cap), default 2.0.
    max_hypothesis_margin: int, default 10.
    english_spelling_mapping: dict or path to Whisper's normalizer.json; enables Whisper's English normaliser
        for English (default: basic normalisation for every language).
Returns:
    `wer_<lang>` or `cer_<lang>` per language, `asr_avg_error`, `asr_samples`, `asr_capped`.
Example:
    >>> part_wer = evaluate.load("trainers/evaluate_metrics/part_wer")
    >>> part_wer.compute(predictions=["the cat sit on mat"], references=["The cat sat on the mat."], languages=["en"])
    {'wer_en': 33.333333333333336, 'asr_avg_error': 33.333333333333336, 'asr_samples': 1, 'asr_capped': 0}
"""

_CITATION = """
@article{zhang2025part,
  title={PART: Progressive Alignment Representation Training for Multilingual Speech-To-Text with LLMs},
  author={Zhang and Chen and Chen and Yang and Wong and Huang},
  journal={arXiv preprint arXiv:2509.19745},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PartWer(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "languages": datasets.Value("string"),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        languages,
        max_hypothesis_ratio=DEFAULT_MAX_HYPOTHESIS_RATIO,
        max_hypothesis_margin=DEFAULT_MAX_HYPOTHESIS_MARGIN,
        english_spelling_mapping=None,
    ):
        return compute_speech_metrics(
            predictions,
            references,
            ["asr"] * len(languages),
            languages,
            languages,
            normalizer=TextNormalizer(english_spelling_mapping),
            max_hypothesis_ratio=max_hypothesis_ratio,
            max_hypothesis_margin=max_hypothesis_margin,
        )
