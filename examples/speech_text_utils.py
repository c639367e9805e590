"""What `run_asr.py` and `run_speech_translation.py` share: the model and data arguments, model loading, dataset
loading (hub, `save_to_disk` folders, local CSV / JSON lines), the task views that turn rows into PART samples and
mixture components, and the train / evaluate / predict / push flow around `trainers.PartTrainer`.

A script supplies only its data arguments and a `task_views` function (rows -> samples of its tasks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
import transformers
from datasets import Audio, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, HfArgumentParser, set_seed

from model_cards import write_model_card
from modeling_part import PartForSpeechToText, PartProcessor
from trainers import MixtureComponent, PartTrainer, PartTrainingArguments, Schedule, Stage, load_schedule
from trainers.part_trainer import STAGE_COMPLETE, last_complete_checkpoint
from trainers.teardown import end_distributed

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
SAMPLE_COLUMNS = ("id", "task", "source_language", "target_language", "text")
"""Columns of every task view (plus `audio` for speech tasks, `source_text` for "mt")."""

TaskViews = Callable[[Dataset, Any, Any, bool], list[Dataset]]
"""(rows of one split, data arguments, processor, training) -> task views; the first is the one evaluated."""


# ------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    """Which model to train: a saved PART model, or a new one assembled from a pretrained encoder and LLM."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved PART model (folder or hub id) with its processor."}
    )
    audio_encoder: str | None = field(
        default=None,
        metadata={"help": "A pretrained speech encoder (SenseVoice-style or Whisper; folder or hub id)."},
    )
    llm: str | None = field(default=None, metadata={"help": "A pretrained causal LM (folder or hub id)."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "The LLM's tokenizer, if it is not stored with --llm."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets are stored."})
    model_revision: str = field(
        default="main",
        metadata={"help": "Branch, tag or commit of the hub model (also of --audio_encoder, --llm, --tokenizer_name)."},
    )
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code stored with the model to run."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype to load the weights in.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )

    def __post_init__(self) -> None:
        components = self.audio_encoder is not None or self.llm is not None
        if self.model_name_or_path is not None and components:
            raise ValueError(
                "Pass either --model_name_or_path (a saved PART model) or --audio_encoder and --llm (a new model "
                "from pretrained parts), not both."
            )
        if self.model_name_or_path is None and (self.audio_encoder is None or self.llm is None):
            raise ValueError(
                "Pass --model_name_or_path (a saved PART model), or both --audio_encoder and --llm to assemble a new "
                "one (e.g. --audio_encoder FunAudioLLM/Fun-ASR-Nano-2512-hf --llm Qwen/Qwen2.5-1.5B)."
            )
        if self.tokenizer_name is not None and self.model_name_or_path is not None:
            raise ValueError("--tokenizer_name goes with --audio_encoder/--llm; a saved PART model has its processor.")


@dataclass
class DataTrainingArguments:
    """Where the data comes from and which columns hold what. Audio files stay undecoded until a batch needs them."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A hub dataset, or a folder written by `datasets.save_to_disk`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The hub dataset's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Training rows: a CSV or JSON lines file."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation rows: a CSV or JSON lines file."})
    test_file: str | None = field(default=None, metadata={"help": "Test rows: a CSV or JSON lines file."})
    train_split_name: str = field(default="train", metadata={"help": "The training split of --dataset_name."})
    eval_split_name: str = field(default="validation", metadata={"help": "The evaluation split of --dataset_name."})
    test_split_name: str = field(default="test", metadata={"help": "The test split of --dataset_name."})
    audio_column: str = field(
        default="audio",
        metadata={"help": "Audio: a file path (relative paths are read from the data file's folder) or Audio dict."},
    )
    text_column: str = field(default="text", metadata={"help": "The target text."})
    language_column: str | None = field(
        default=None, metadata={"help": "Per-row ISO 639 code of the spoken (source) language."}
    )
    source_language: str | None = field(
        default=None, metadata={"help": "The ISO 639 code of the spoken language of every row (instead of a column)."}
    )
    id_column: str | None = field(default=None, metadata={"help": "Row ids for the predictions (default: row index)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N test rows."})
    generation_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token limit of generated outputs (default: a bound from the audio length)."}
    )
    generation_num_beams: int = field(default=1, metadata={"help": "Beam size for evaluation and prediction."})
    cap_hypotheses: bool = field(
        default=False,
        metadata={"help": "Also report WER/CER with each hypothesis cut to max(2 x reference, reference + 10) units, "
                          "as <split>_wer_capped_<lang> (never in the model card). The plain <split>_wer_<lang> is "
                          "always reported uncapped, as jiwer counts it."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train from scratch in a non-empty output_dir (removing its stage folders), not resume."},
    )


def parse_arguments(data_arguments_class: type, argv: Sequence[str] | None = None):
    """(model, data, training) arguments from the command line, or from a single .json / .yaml file."""
    parser = HfArgumentParser((ModelArguments, data_arguments_class, PartTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    elif len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        model_args, data_args, training_args = parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if isinstance(training_args.resume_from_checkpoint, str):
        flag = training_args.resume_from_checkpoint.strip().lower()
        if flag in ("true", "yes", "1"):
            training_args.resume_from_checkpoint = True
        elif flag in ("false", "no", "0", ""):
            training_args.resume_from_checkpoint = None
    return model_args, data_args, training_args


def setup_logging(training_args: PartTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # the default of training_args.log_level is passive
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.local_process_index}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16 or training_args.bf16}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")


def resolve_resume(training_args: PartTrainingArguments, data_args: DataTrainingArguments) -> str | bool | None:
    """What to pass to `train(resume_from_checkpoint=...)`. Like the transformers scripts, a run whose output_dir
    already holds PART progress (a stage checkpoint or a finished stage) resumes it, and any other non-empty
    output_dir is refused, unless --overwrite_output_dir (which removes the old stage folders, so a later resume
    cannot mistake them for this run's progress)."""
    output_dir = training_args.output_dir
    if not training_args.do_train or not os.path.isdir(output_dir):
        return training_args.resume_from_checkpoint
    stage_dirs = sorted(
        os.path.join(output_dir, name) for name in os.listdir(output_dir)
        if name.startswith("stage-") and os.path.isdir(os.path.join(output_dir, name))
    )
    if data_args.overwrite_output_dir and not training_args.resume_from_checkpoint:
        if stage_dirs and training_args.should_save:
            logger.warning(f"--overwrite_output_dir: removing the stage folders of an earlier run in {output_dir}.")
            for folder in stage_dirs:
                shutil.rmtree(folder)
        return None
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    progress = [
        d for d in stage_dirs if os.path.isfile(os.path.join(d, STAGE_COMPLETE)) or last_complete_checkpoint(d)
    ]
    if progress:
        logger.info(
            f"Found the progress of an earlier run in {output_dir} (last: {os.path.basename(progress[-1])}); resuming "
            "it. Pass --overwrite_output_dir to train from scratch instead."
        )
        return True
    if os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists and is not empty, and holds no PART checkpoint to resume "
            "from. Use --overwrite_output_dir to train in it anyway, or choose another --output_dir."
        )
    return None


# ------------------------------------------------------------------------------------------------------ model
def load_model_and_processor(model_args: ModelArguments):
    """A saved PART model and its processor, or a new model from `--audio_encoder` + `--llm` (fresh adapter).

    `--cache_dir`, `--model_revision`, `--token` and `--trust_remote_code` apply to every `from_pretrained` call of
    either path (the encoder, the LLM and its tokenizer alike), `--dtype` to every model.
    """
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision,
                  "token": model_args.token, "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path is not None:
        dtype_kwargs = {"dtype": model_args.dtype} if model_args.dtype is not None else {}
        model = AutoModelForSpeechSeq2Seq.from_pretrained(model_args.model_name_or_path, **hub_kwargs, **dtype_kwargs)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
        return model, processor
    model, tokenizer = PartForSpeechToText.from_pretrained_components(
        audio_encoder=model_args.audio_encoder,
        llm=model_args.llm,
        tokenizer=model_args.tokenizer_name,
        dtype=None if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype),  # None: "auto"
        return_tokenizer=True,
        load_kwargs=hub_kwargs,
    )
    return model, PartProcessor.for_model(model.config, tokenizer)


# ------------------------------------------------------------------------------------------------------- data
def load_raw_datasets(
    data_args: DataTrainingArguments, model_args: ModelArguments, splits: Sequence[str]
) -> DatasetDict:
    """The rows of the requested splits ("train", "eval", "test"), with the audio column cast to
    `Audio(decode=False)`: audio is decoded by the processor (soundfile), never by `datasets`."""
    files = {"train": data_args.train_file, "eval": data_args.validation_file, "test": data_args.test_file}
    split_names = {"train": data_args.train_split_name, "eval": data_args.eval_split_name,
                   "test": data_args.test_split_name}
    limits = {"train": data_args.max_train_samples, "eval": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    flags = {"train": "--train_file", "eval": "--validation_file", "test": "--test_file"}
    saved = _load_saved_dataset(data_args.dataset_name) if data_args.dataset_name else None
    raw = DatasetDict()
    for split in splits:
        if files[split] is not None:
            raw[split] = _load_local_file(files[split], data_args.audio_column, model_args.cache_dir)
        elif saved is not None:
            if split_names[split] not in saved:
                raise ValueError(
                    f"{data_args.dataset_name} has no split {split_names[split]!r}; it has {sorted(saved)}. Set "
                    f"--{split}_split_name."
                )
            raw[split] = saved[split_names[split]]
        elif data_args.dataset_name is not None:
            raw[split] = load_dataset(
                data_args.dataset_name,
                data_args.dataset_config_name,
                split=split_names[split],
                cache_dir=model_args.cache_dir,
                token=model_args.token,
            )
        else:
            raise ValueError(f"No {split} data: pass {flags[split]} (CSV or JSON lines) or --dataset_name.")
        if data_args.audio_column in raw[split].column_names:
            raw[split] = _cast_to_undecoded_audio(raw[split], data_args.audio_column)
        if limits[split] is not None:
            raw[split] = raw[split].select(range(min(limits[split], len(raw[split]))))
    return raw


def _load_saved_dataset(name: str) -> dict[str, Dataset] | None:
    """A `save_to_disk` folder as {split: Dataset}, or None when `name` is not one (then it is a hub dataset)."""
    if not os.path.isdir(name) or not any(
        os.path.isfile(os.path.join(name, marker)) for marker in ("dataset_dict.json", "state.json")
    ):
        return None
    saved = load_from_disk(name)
    return dict(saved) if isinstance(saved, DatasetDict) else {"train": saved}


def _load_local_file(path: str, audio_column: str, cache_dir: str | None) -> Dataset:
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in ("csv", "json", "jsonl"):
        raise ValueError(f"{path}: data files must be CSV (.csv) or JSON lines (.json, .jsonl), got {extension!r}.")
    dataset = load_dataset("csv" if extension == "csv" else "json", data_files=path, split="train", cache_dir=cache_dir)
    if _is_string_column(dataset, audio_column):  # relative audio paths are relative to the data file
        folder = os.path.dirname(os.path.abspath(path))
        dataset = dataset.map(
            lambda batch: {audio_column: [_join(folder, p) for p in batch[audio_column]]},
            batched=True,
            desc=f"resolving audio paths of {os.path.basename(path)}",
        )
    return dataset


def _is_string_column(dataset: Dataset, column: str) -> bool:
    return getattr(dataset.features.get(column), "dtype", None) in ("string", "large_string")


def _cast_to_undecoded_audio(dataset: Dataset, column: str) -> Dataset:
    if _is_string_column(dataset, column):  # `Audio` casts from string paths, not from large_string (CSV, JSON)
        dataset = dataset.cast_column(column, Value("string"))
    return dataset.cast_column(column, Audio(sampling_rate=SAMPLING_RATE, decode=False))


def _join(folder: str, path: str | None) -> str | None:
    return path if not path or os.path.isabs(path) or "://" in path else os.path.join(folder, path)


def require_columns(dataset: Dataset, columns: Sequence[str]) -> None:
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The data has no column {missing}; its columns are {dataset.column_names}. Name the right ones with the "
            "--*_column arguments."
        )


def row_languages(
    dataset: Dataset, data_args, processor, column_field: str, fixed_field: str, required: bool = True
) -> list[str] | None:
    """One language code per row: from the column named by `data_args.<column_field>`, or the fixed code of
    `data_args.<fixed_field>`. Codes the processor has no prompt name for are refused."""
    column, fixed = getattr(data_args, column_field), getattr(data_args, fixed_field)
    if column is not None and fixed is not None:
        raise ValueError(f"Pass --{column_field} or --{fixed_field}, not both.")
    if column is None and fixed is None:
        if not required:
            return None
        raise ValueError(
            f"Which language is it? Pass --{column_field} (a column of per-row ISO 639 codes) or --{fixed_field} "
            "(one code for every row)."
        )
    if column is not None:
        require_columns(dataset, [column])
        languages = [str(code).strip() if code is not None else "" for code in dataset[column]]
    else:
        languages = [fixed] * len(dataset)
    unknown = sorted(set(languages) - set(processor.language_names))
    if unknown:
        raise ValueError(
            f"--{column if column is not None else fixed_field} holds language codes {unknown} the processor has no "
            f"name for; use ISO 639 codes from {sorted(processor.language_names)}, or save the processor with "
            "more language_names."
        )
    return languages


def task_view(
    dataset: Dataset,
    data_args,
    task: str,
    source_languages: Sequence[str],
    target_languages: Sequence[str],
    text_column: str,
    source_text_column: str | None = None,
) -> Dataset:
    """The rows as PART samples of one task: columns `id`, `task`, `source_language`, `target_language`, `text`,
    and `audio` (speech tasks) or `source_text` ("mt", from `source_text_column`). Rows with an empty text (or
    source text) are dropped."""
    inputs = {source_text_column: "source_text"} if task == "mt" else {data_args.audio_column: "audio"}
    require_columns(dataset, [text_column, *inputs])
    ids = [str(i) for i in range(len(dataset))]
    if data_args.id_column is not None:
        require_columns(dataset, [data_args.id_column])
        ids = [str(i) for i in dataset[data_args.id_column]]
    texts = list(dataset[text_column])
    keep = [i for i, text in enumerate(texts) if isinstance(text, str) and text.strip()]
    if task == "mt":
        sources = list(dataset[source_text_column])
        keep = [i for i in keep if isinstance(sources[i], str) and sources[i].strip()]
    view = dataset.select_columns(list(inputs))
    renames = {old: new for old, new in inputs.items() if old != new}
    view = view.rename_columns(renames) if renames else view
    columns = {"id": ids, "task": [task] * len(dataset), "source_language": list(source_languages),
               "target_language": list(target_languages), "text": texts}
    for name, values in columns.items():  # before `select`: adding to a selection would copy the audio
        view = view.add_column(name, values)
    if len(keep) < len(dataset):
        logger.warning(f"{task}: dropped {len(dataset) - len(keep)} of {len(dataset)} rows with an empty text.")
        view = view.select(keep)
    return view


def mixture_components(views: Sequence[Dataset]) -> list[MixtureComponent]:
    """One `MixtureComponent` per (task, source language, target language) of the task views."""
    components = []
    for view in views:
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for index, key in enumerate(zip(view["task"], view["source_language"], view["target_language"])):
            groups[key].append(index)
        for (task, source, target), indices in sorted(groups.items()):
            name = f"{task}_{source}" if task == "asr" else f"{task}_{source}_{target}"
            keep = ["source_text" if task == "mt" else "audio", "text"]
            components.append(MixtureComponent(name, view.select(indices).select_columns(keep), task, source, target))
    return components


# -------------------------------------------------------------------------------------------------- the run
def run_speech_text(
    data_arguments_class: type,
    task_views: TaskViews,
    argv: Sequence[str] | None = None,
    card_tasks: Sequence[str] = ("automatic-speech-recognition",),
    missing_task_hint: str = "",
) -> dict[str, float]:
    """Parses the arguments, then trains (`--do_train`), evaluates (`--do_eval`) and predicts (`--do_predict`);
    returns all metrics."""
    model_args, data_args, training_args = parse_arguments(data_arguments_class, argv)
    setup_logging(training_args)
    resume = resolve_resume(training_args, data_args)
    set_seed(training_args.seed)

    splits = [s for s, wanted in (("train", training_args.do_train), ("eval", training_args.do_eval),
                                  ("test", training_args.do_predict)) if wanted]
    if not splits:
        raise ValueError("Nothing to do: pass --do_train, --do_eval and/or --do_predict.")

    model, processor = load_model_and_processor(model_args)
    with training_args.main_process_first(desc="loading the datasets"):
        raw = load_raw_datasets(data_args, model_args, splits)
        train_views = task_views(raw["train"], data_args, processor, True) if "train" in raw else []
        eval_samples = task_views(raw["eval"], data_args, processor, False)[0] if "eval" in raw else None
        test_samples = task_views(raw["test"], data_args, processor, False)[0] if "test" in raw else None

    if training_args.do_train:
        components = mixture_components(train_views)
        schedule = load_schedule(training_args.schedule, mt_weight=training_args.mt_weight)
        schedule.check_covers(components, missing_task_hint)
    else:  # PartTrainer needs train components even when it only evaluates; this schedule never runs.
        components = mixture_components([v for v in (eval_samples, test_samples) if v is not None])
        tasks = {c.task: 1.0 for c in components}
        schedule = Schedule("evaluation_only", [Stage("evaluation_only", ["adapter"], tasks, steps=1)])
    for component in components:
        logger.info(f"component {component.name}: {component.size} samples")

    trainer = PartTrainer(
        model=model,
        args=training_args,
        train_components=components,
        processor=processor,
        schedule=schedule,
        eval_dataset=eval_samples,
    )

    results: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume)  # saves the final model and processor
        metrics = dict(train_result.metrics) if train_result is not None else {}
        metrics["train_samples"] = sum(c.size for c in components)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)

    generate_kwargs = {"num_beams": data_args.generation_num_beams}
    if data_args.generation_max_new_tokens is not None:
        generate_kwargs["max_new_tokens"] = data_args.generation_max_new_tokens
    for prefix, samples in (("eval", eval_samples), ("test", test_samples)):
        if samples is not None:
            logger.info(f"*** {'Evaluate' if prefix == 'eval' else 'Predict'} ***")
            results.update(evaluate_split(trainer, samples, prefix, generate_kwargs, data_args.cap_hypotheses))

    if training_args.do_train:
        write_card(trainer, data_args, results, components)
        if training_args.push_to_hub:
            trainer.push_to_hub()
    elif training_args.push_to_hub:
        logger.warning("--push_to_hub uploads the model a run trains: nothing was pushed without --do_train.")
    end_distributed(trainer)  # under torchrun: the process group goes now, not while the interpreter exits
    return results


def evaluate_split(
    trainer: PartTrainer, samples: Dataset, prefix: str, generate_kwargs: dict, cap_hypotheses: bool = False
) -> dict[str, float]:
    """Teacher-forced loss and generation metrics (WER/CER per language, BLEU per direction) of one split; writes
    `<prefix>_results.json` and `predictions_<prefix>.jsonl`. `cap_hypotheses` adds the capped WER/CER keys."""
    metrics = trainer.evaluate(eval_dataset=samples, metric_key_prefix=prefix)
    generated, predictions = trainer.evaluate_generation(
        samples, metric_key_prefix=prefix, hypothesis_cap=cap_hypotheses, **generate_kwargs
    )
    metrics.update(generated)
    metrics[f"{prefix}_samples"] = len(samples)
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics(prefix, metrics)
    if trainer.is_world_process_zero():
        write_predictions(os.path.join(trainer.args.output_dir, f"predictions_{prefix}.jsonl"), samples, predictions)
    return metrics


def write_predictions(path: str, samples: Dataset, predictions: Sequence[str]) -> None:
    """One JSON line per sample: id, task, languages, reference and prediction."""
    rows = samples.select_columns(list(SAMPLE_COLUMNS))
    with open(path, "w", encoding="utf-8") as f:
        for row, prediction in zip(rows, predictions):
            line = {
                "id": row["id"],
                "task": row["task"],
                "source_language": row["source_language"],
                "target_language": row["target_language"],
                "reference": row["text"],
                "prediction": prediction,
            }
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    logger.info(f"Wrote {len(predictions)} predictions to {path}")


def write_card(trainer: PartTrainer, data_args, metrics: dict[str, float], components) -> None:
    """Writes the run's model card (`output_dir/README.md`) with `model_cards.write_model_card`; its `base_model` is
    the encoder and LLM the saved config was assembled from, when they are Hub ids (local folders are left out)."""
    if not trainer.is_world_process_zero():
        return
    prefix = "test" if any(k.startswith("test_") for k in metrics) else "eval"
    scored = {k: v for k, v in metrics.items() if k.startswith(f"{prefix}_") and k.split("_")[1] in ("wer", "cer", "bleu")}
    if not scored:
        logger.warning("No evaluation metrics (run with --do_eval or --do_predict): no model card was written.")
        return
    languages = sorted({c.source_language for c in components} | {c.target_language for c in components})
    write_model_card(
        trainer.args.output_dir,
        metrics={k: v for k, v in metrics.items() if k.startswith(f"{prefix}_")},
        metric_key_prefix=prefix,
        languages=languages,
        dataset_name=data_args.dataset_name or "local files",
        repo_id=trainer.args.hub_model_id,
    )


__all__ = [
    "DataTrainingArguments",
    "ModelArguments",
    "load_model_and_processor",
    "load_raw_datasets",
    "mixture_components",
    "parse_arguments",
    "resolve_resume",
    "row_languages",
    "run_speech_text",
    "task_view",
    "write_predictions",
]
