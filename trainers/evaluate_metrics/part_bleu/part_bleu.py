"""`evaluate` metric for PART's speech translation scores (`trainers.metrics.compute_speech_metrics` on S2TT samples).
Load it offline with `evaluate.load(trainers.metrics.evaluate_metric_path("part_bleu"))`; `evaluate` runs a copy of
this script, so it imports the installed `trainers.metrics`."""

import datasets
import evaluate

from trainers.metrics import compute_speech_metrics


_DESCRIPTION = """
sacreBLEU corpus BLEU per translation direction on raw (unnormalised) text: tokenizer "13a" for most targets
(the paper's xx->en setting), "zh" for Chinese targets, "char" for Japanese and Korean targets (mecab-based
tokenizers need extra packages). Also returns the unweighted mean over directions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions, references: lists of translations and reference translations (str), one per sample.
    source_languages, target_languages: lists of language codes (str).
    bleu_tokenizers: optional dict target language -> sacreBLEU tokenizer name, overriding the defaults.
Returns:
    `bleu_<src>-<tgt>` per direction, `s2tt_avg_bleu`, `s2tt_samples`.
Example:
    >>> part_bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"],
    ...                   source_languages=["de"], target_languages=["en"])
    {'bleu_de-en': 100.00000000000004, 's2tt_avg_bleu': 100.00000000000004, 's2tt_samples': 1}
"""

_CITATION = """
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation: Research Papers},
  year={2018},
  pages={186--191}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PartBleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        columns = ("predictions", "references", "source_languages", "target_languages")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(dict.fromkeys(columns, datasets.Value("string"))),
        )

    def _compute(self, predictions, references, source_languages, target_languages, bleu_tokenizers=None):
        tasks = ["s2tt"] * len(predictions)
        return compute_speech_metrics(
            predictions, references, tasks, source_languages, target_languages, bleu_tokenizers=bleu_tokenizers
        )
