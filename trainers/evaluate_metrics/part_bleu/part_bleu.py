"""`evaluate` metric for PART's speech-translation scores: sacreBLEU per direction and their mean.

Load it offline with `evaluate.load("<path to trainers/evaluate_metrics/part_bleu>")`. `evaluate` copies this
script to its module cache, so it imports the installed `trainers.metrics` instead of a relative module.
"""

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
    predictions: list of translations (str).
    references: list of reference translations (str), one per sample.
    source_languages: list of source language codes (str).
    target_languages: list of target language codes (str).
    bleu_tokenizers: optional dict target language -> sacreBLEU tokenizer name, overriding the defaults.
Returns:
    `bleu_<src>-<tgt>` per direction, `s2tt_avg_bleu`, `s2tt_samples`.
Example:
    >>> part_bleu = evaluate.load("trainers/evaluate_metrics/part_bleu")
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
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "source_languages": datasets.Value("string"),
                    "target_languages": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, source_languages, target_languages, bleu_tokenizers=None):
        return compute_speech_metrics(
            predictions,
            references,
            ["s2tt"] * len(predictions),
            source_languages,
            target_languages,
            bleu_tokenizers=bleu_tokenizers,
        )
