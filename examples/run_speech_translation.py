#!/usr/bin/env python
"""Train a PART speech LLM for speech-to-text translation (S2TT), evaluate it (BLEU per direction) and translate
a test set, in the shape of transformers' `run_speech_recognition_seq2seq.py`.

Every translation direction of the training data becomes one "s2tt" mixture component. With
`--source_text_column` (the transcript of the speech, as in CoVoST 2), the same rows also give "asr" components
(speech -> transcript), which PART's within-language stages train on, and text-only "mt" components
(transcript -> translation). See `speech_text_utils.py` for the arguments shared with `run_asr.py`.

    python examples/run_speech_translation.py --model_name_or_path my-part --train_file train.jsonl \\
        --validation_file dev.jsonl --language_column language --target_language en --text_column translation \\
        --source_text_column sentence --schedule part --max_steps 20000 --output_dir run --do_train --do_eval
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from speech_text_utils import DataTrainingArguments, row_languages, run_speech_text, task_view

SOURCE_TEXT_TASKS = ("asr", "mt")


@dataclass
class TranslationDataArguments(DataTrainingArguments):
    """`--text_column` is the translation; the source language comes from `--language_column`/`--source_language`."""

    target_language: str | None = field(
        default=None, metadata={"help": "The ISO 639 code of every row's translation (e.g. en)."}
    )
    target_language_column: str | None = field(
        default=None, metadata={"help": "Per-row ISO 639 code of the translation (instead of --target_language)."}
    )
    source_text_column: str | None = field(
        default=None, metadata={"help": "The transcript of the speech: adds the --source_text_tasks to training."}
    )
    source_text_tasks: list[str] = field(
        default_factory=lambda: list(SOURCE_TEXT_TASKS),
        metadata={"help": "What --source_text_column trains: 'asr' (speech -> transcript), 'mt' (transcript -> "
                          "translation, text only)."},
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.source_text_tasks) - set(SOURCE_TEXT_TASKS))
        if unknown:
            raise ValueError(f"--source_text_tasks {unknown}: choose from {SOURCE_TEXT_TASKS}.")


def translation_views(
    dataset: Dataset, data_args: TranslationDataArguments, processor, training: bool
) -> list[Dataset]:
    """s2tt (speech in X -> `--text_column` in Y) first; for training, also asr and mt from the source text."""
    sources = row_languages(dataset, data_args, processor, "language_column", "source_language")
    targets = row_languages(dataset, data_args, processor, "target_language_column", "target_language")
    views = [task_view(dataset, data_args, "s2tt", sources, targets, data_args.text_column)]
    if training and data_args.source_text_column is not None:
        if "asr" in data_args.source_text_tasks:
            views.append(task_view(dataset, data_args, "asr", sources, sources, data_args.source_text_column))
        if "mt" in data_args.source_text_tasks:
            views.append(
                task_view(dataset, data_args, "mt", sources, targets, data_args.text_column,
                          source_text_column=data_args.source_text_column)
            )
    return views


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    return run_speech_text(
        TranslationDataArguments,
        translation_views,
        argv,
        card_tasks=("automatic-speech-recognition", "translation"),
        missing_task_hint=(
            "Pass --source_text_column (the speech's transcripts) to add ASR and MT components, or use a schedule "
            "whose every stage samples s2tt (e.g. --schedule baseline_2stage, or a JSON/YAML schedule)."
        ),
    )


if __name__ == "__main__":
    main()
