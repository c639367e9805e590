"""Hub model cards and publishing for PART runs: `write_model_card` fills `template.md` from a run's summary and test
metrics, `publish` uploads the finished model folder in one commit."""

from .card import Score, build_model_card, parse_part_metrics, write_model_card
from .publish import missing_model_files, publish, publish_files

__all__ = [
    "Score",
    "build_model_card",
    "missing_model_files",
    "parse_part_metrics",
    "publish",
    "publish_files",
    "write_model_card",
]
