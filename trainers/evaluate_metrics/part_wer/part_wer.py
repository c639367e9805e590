"""`evaluate` metric for PART's ASR scores (`trainers.metrics.compute_speech_metrics` on ASR samples). Load it offline
with `evaluate.load(trainers.metrics.evaluate_metric_path("part_wer"))`; `evaluate` runs a copy of this script, so it
imports the installed `trainers.metrics`."""

import datasets
import evaluate

from trainers.metrics import TextNormalizer, compute_speech_metrics


_DESCRIPTION = """
Corpus word error rate per language, in percent, after Whisper's text normalisation; character error rate (spaces
removed) for zh, cmn, ja, ko and yue. Every insertion counts, as in `jiwer.wer` over a list of sentences: a 30-word
hypothesis for a 1-word reference scores 2900%. Also returns the unweighted mean over languages.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions, references, languages: lists of hypotheses, reference transcripts and language codes (str).
    hypothesis_cap: None (default), True (max(2 x reference, reference + 10) units) or {"ratio": float, "margin":
        int}: adds rates of hypotheses truncated to the cap under `*_capped*` keys; the plain ones stay uncapped.
    english_spelling_mapping: dict or path of Whisper's normalizer.json, for Whisper's English normaliser.
Returns:
    `wer_<lang>` or `cer_<lang>` per language, `asr_avg_error`, `asr_samples`; with `hypothesis_cap` also
    `wer_capped_<lang>` / `cer_capped_<lang>`, `asr_avg_error_capped`, `asr_capped_hypotheses`,
    `asr_hypothesis_cap_ratio`, `asr_hypothesis_cap_margin`.
Example:
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
        columns = ("predictions", "references", "languages")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(dict.fromkeys(columns, datasets.Value("string"))),
        )

    def _compute(self, predictions, references, languages, hypothesis_cap=None, english_spelling_mapping=None):
        tasks, normalizer = ["asr"] * len(languages), TextNormalizer(english_spelling_mapping)
        return compute_speech_metrics(
            predictions, references, tasks, languages, languages, normalizer=normalizer, hypothesis_cap=hypothesis_cap
        )
