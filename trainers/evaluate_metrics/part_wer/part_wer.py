"""`evaluate` metric for PART's ASR scores: Whisper-normalised WER per language (CER for zh, cmn, ja, ko, yue).

Load it offline with `evaluate.load("<path to trainers/evaluate_metrics/part_wer>")`. `evaluate` copies this
script to its module cache, so it imports the installed `trainers.metrics` instead of a relative module.
"""

import datasets
import evaluate

from trainers.metrics import HypothesisCap, TextNormalizer, compute_speech_metrics


_DESCRIPTION = """
Corpus word error rate per language, in percent, after Whisper's text normalisation; character error rate
(spaces removed) for zh, cmn, ja, ko and yue. Every insertion counts, as in `jiwer.wer` over a list of sentences:
a 30-word hypothesis for a 1-word reference scores 2900%. Also returns the unweighted mean over languages.
Opt-in: `hypothesis_cap` also reports rates with each hypothesis first truncated to
max(2 x reference, reference + 10) units, under their own keys (`wer_capped_<lang>`, `asr_avg_error_capped`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypotheses (str).
    references: list of reference transcripts (str).
    languages: list of language codes (str), one per sample.
    hypothesis_cap: None (default, no cap), True (2 x reference, reference + 10 units) or
        {"ratio": float, "margin": int}: adds capped rates under `*_capped*` keys; the plain ones stay uncapped.
    english_spelling_mapping: dict or path to Whisper's normalizer.json; enables Whisper's English normaliser
        for English (default: basic normalisation for every language).
Returns:
    `wer_<lang>` or `cer_<lang>` per language, `asr_avg_error`, `asr_samples`; with `hypothesis_cap` also
    `wer_capped_<lang>` / `cer_capped_<lang>`, `asr_avg_error_capped`, `asr_capped_hypotheses`,
    `asr_hypothesis_cap_ratio`, `asr_hypothesis_cap_margin`.
Example:
    >>> part_wer = evaluate.load("trainers/evaluate_metrics/part_wer")
    >>> part_wer.compute(predictions=["the cat sit on mat"], references=["The cat sat on the mat."], languages=["en"])
    {'wer_en': 33.333333333333336, 'asr_avg_error': 33.333333333333336, 'asr_samples': 1}
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

    def _compute(self, predictions, references, languages, hypothesis_cap=None, english_spelling_mapping=None):
        return compute_speech_metrics(
            predictions,
            references,
            ["asr"] * len(languages),
            languages,
            languages,
            normalizer=TextNormalizer(english_spelling_mapping),
            hypothesis_cap=HypothesisCap.coerce(hypothesis_cap),
        )
