#!/usr/bin/env python
"""Train a PART speech LLM for multilingual speech recognition (ASR), evaluate it (WER/CER per language) and
transcribe a test set, in the shape of transformers' `run_speech_recognition_seq2seq.py`.

Every spoken language of the training data becomes one "asr" mixture component; the stage schedule (`--schedule`)
decides when each parameter group trains. See `speech_text_utils.py` for the arguments shared with
`run_speech_translation.py`.

    python examples/run_asr.py --model_name_or_path my-part --train_file train.csv --validation_file dev.csv \\
        --language_column language --schedule part --max_steps 20000 --output_dir run --do_train --do_eval
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from speech_text_utils import DataTrainingArguments, row_languages, run_speech_text, task_view


def asr_views(dataset: Dataset, data_args: DataTrainingArguments, processor, training: bool) -> list[Dataset]:
    """Speech in language X -> its transcript in X (`--text_column`)."""
    languages = row_languages(dataset, data_args, processor, "language_column", "source_language")
    return [task_view(dataset, data_args, "asr", languages, languages, data_args.text_column)]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    return run_speech_text(DataTrainingArguments, asr_views, argv, card_tasks=("automatic-speech-recognition",))


if __name__ == "__main__":
    main()
