"""Hub model cards for PART runs: a `huggingface_hub.ModelCard` whose `ModelCardData` (with the `model-index` of
`EvalResult`s) and `template.md` body (`ModelCard.from_template`) are filled from a run's training summary and test
metrics; this module only reads and checks the inputs."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

TEMPLATE_PATH = Path(__file__).resolve().parent / "template.md"
"""The card's Jinja template, rendered by `huggingface_hub.ModelCard.from_template`."""

SUMMARY_NAME = "training_summary.json"
SCHEDULE_NAME = "schedule.json"
DATA_SUMMARY_NAME = "data_summary.json"
CARD_NAME = "README.md"
RESULTS_NAMES = ("results.json", "test_results.json", "all_results.json", "metrics.json")
"""Files of a run folder that `write_model_card` reads the test metrics from (the first one present)."""

DEFAULT_TAGS = ("speech-translation", "speech-llm", "part", "audio", "speech")
TASKS = ("asr", "s2tt", "mt")
EVAL_TASKS = {"asr": ("automatic-speech-recognition", "Speech Recognition"),
              "s2tt": ("translation", "Speech Translation")}
"""PART task -> (Hub task type, task name) of its `model-index` results (text-only `mt` stays in the body)."""

# The keys of `trainers.metrics.compute_speech_metrics`: `<name>_<language or direction>` and a task's average.
SCORE_NAMES = {"wer": ("asr", "wer"), "cer": ("asr", "cer"), "bleu": ("s2tt", "bleu"), "mt_bleu": ("mt", "bleu")}
AVERAGE_KEYS = {"asr": "asr_avg_error", "s2tt": "s2tt_avg_bleu", "mt": "mt_avg_bleu"}
_SCORE_KEY = re.compile(rf"({'|'.join(SCORE_NAMES)})_((?!capped_)[A-Za-z0-9][A-Za-z0-9_-]*)")
_CAPPED = ("wer_capped_", "cer_capped_", "asr_avg_error_capped")
"""Opt-in capped error rates (`compute_speech_metrics(hypothesis_cap=...)`): never reported as a WER/CER."""
_METRICS_HELP = (
    "Pass the flat dict of PartTrainer.evaluate_generation / trainers.metrics.compute_speech_metrics: `test_wer_<lang>`"
    " or `test_cer_<lang>` per ASR language and `test_bleu_<src>-<tgt>` per translation direction (the `test_` prefix"
    " is optional), e.g. {'test_wer_de': 12.3, 'test_cer_zh': 8.1, 'test_bleu_de-en': 21.4}"
)
_SUMMARY_HELP = (
    "pass the trainer's training_summary.json (written by PartTrainer.train()) as a dict with 'schedule': {'name', "
    "'stages': [{'name', 'trainable', 'tasks', 'steps' | 'fraction', ...}]} and/or 'stages': [{'name', 'steps', "
    "'trainable_parameters', 'total_parameters', 'first_loss', 'last_loss', 'seconds'}]"
)
_DATA_HELP = (
    "data_summary must map task -> {language or direction: hours} (e.g. {'asr': {'de': 120.0}, 's2tt': {'de-en': "
    "40.0}}), language -> {task: hours}, or language -> hours"
)


# ------------------------------------------------------------------------------------------------------ metrics
class Score(NamedTuple):
    """One test score of a PART model."""

    task: str  # "asr", "s2tt" or "mt"
    metric: str  # "wer", "cer" or "bleu"; "error" for the ASR average (it may mix WER and CER)
    subject: str | None  # the ASR language or the "<src>-<tgt>" direction; None for the task's average
    value: float  # percent (WER/CER) or BLEU
    baseline: float | None = None  # the comparison model's score, when one is given

    @property
    def worse(self) -> bool:
        """Worse than the baseline: a higher error rate, a lower BLEU."""
        if self.baseline is None:
            return False
        return self.value < self.baseline if self.metric == "bleu" else self.value > self.baseline


def _is_part_metric(name: str) -> bool:
    return name in AVERAGE_KEYS.values() or bool(_SCORE_KEY.fullmatch(name))


def _metric_value(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"Metric {key!r} is {value!r}; metric values must be finite numbers (percent / BLEU).")
    return float(value)


def parse_part_metrics(metrics: Mapping[str, Any], metric_key_prefix: str | None = "test") -> list[Score]:
    """One `Score` per ASR language, S2TT and MT direction of a flat metrics dict (in key order), then each task's
    average (as given, else the unweighted mean of its scores).

    Keys are those of `compute_speech_metrics` (`wer_<lang>`, `cer_<lang>`, `bleu_<src>-<tgt>`, `mt_bleu_<src>-<tgt>`,
    `asr_avg_error`, `s2tt_avg_bleu`, `mt_avg_bleu`), optionally prefixed by `metric_key_prefix` (a prefixed key wins
    over the same key without it). Other keys (loss, sample counts, the capped `wer_capped_<lang>`) are ignored.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}. {_METRICS_HELP}.")
    prefix = f"{metric_key_prefix}_" if metric_key_prefix else ""
    keys: dict[str, str] = {}  # metric name -> the key it is read from
    for key in metrics:
        if _is_part_metric(name := key.removeprefix(prefix)) and (name != key or name not in keys):
            keys[name] = key
    values = {name: _metric_value(key, metrics[key]) for name, key in keys.items()}

    scores = []
    for name, value in values.items():
        if match := _SCORE_KEY.fullmatch(name):
            task, metric = SCORE_NAMES[match[1]]
            if task == "asr" and any(s.task == "asr" and s.subject == match[2] for s in scores):
                raise ValueError(f"Language {match[2]!r} has both a WER and a CER; pass one error rate per language.")
            scores.append(Score(task, metric, match[2], value))
    if not any(s.task in EVAL_TASKS for s in scores):
        hint = ""
        unread = [key for key in metrics if not _is_part_metric(key.removeprefix(prefix))]
        if found := sorted({key.partition("_")[0] for key in unread if _is_part_metric(key.partition("_")[2])}):
            hint = f" Keys with the prefix {found} were found: pass metric_key_prefix={found[0]!r}."
        if capped := sorted(key for key in metrics if key.removeprefix(prefix).startswith(_CAPPED)):
            hint += (
                f" The capped error rates {capped[:4]} are not reported in a card: they truncate long hypotheses, so "
                "they are not WER/CER; pass the plain `wer_<lang>` / `cer_<lang>` that compute_speech_metrics "
                "always returns next to them."
            )
        raise ValueError(
            f"No ASR or speech translation metrics in metrics (keys: {sorted(metrics)[:12]}). {_METRICS_HELP}.{hint}"
        )
    for task, key in AVERAGE_KEYS.items():
        task_values = [s.value for s in scores if s.task == task]
        average = values.get(key, sum(task_values) / len(task_values) if task_values else None)
        if average is not None:
            scores.append(Score(task, "error" if task == "asr" else "bleu", None, average))
    return scores


def split_direction(direction: str) -> tuple[str, str]:
    """`"de-en"` -> `("de", "en")`; with more hyphens, the first and last parts."""
    parts = direction.split("-")
    return (parts[0], parts[-1]) if len(parts) > 1 else (direction, direction)


# ----------------------------------------------------------------------------------------------------- inputs
def _eval_dataset(value: Any, task: str, split: str) -> dict[str, Any]:
    """The `EvalResult` dataset fields of a test set given as a Hub id or {'id', 'name', 'config', 'split'}."""
    value = {"id": value} if isinstance(value, str) else value
    if not isinstance(value, Mapping) or "id" not in value:
        raise ValueError(
            f"eval_datasets[{task!r}] is {value!r}; give a Hub dataset id or a dict "
            "{'id': 'google/fleurs', 'name': 'FLEURS', 'config': ..., 'split': 'test'}."
        )
    return {
        "dataset_type": str(value["id"]),
        "dataset_name": str(value.get("name", value["id"])),
        "dataset_config": value.get("config"),
        "dataset_split": str(value.get("split", split)),
    }


def _iso_code(language: str) -> str:
    base = str(language).strip().lower().replace("_", "-").split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", base):
        raise ValueError(
            f"Language {language!r} is not an ISO 639 code; the Hub's `language` field needs two- or three-letter "
            "codes: pass languages=['de', 'zh', 'yue', ...]."
        )
    return base


def _language_names(codes: Sequence[str]) -> dict[str, str]:
    """English names of language codes (the processor's table; the code itself when it has none)."""
    from modeling_part.processing_part import LANGUAGE_NAMES  # only when a card is built: it imports torch

    return {code: LANGUAGE_NAMES.get(code, LANGUAGE_NAMES.get(re.split("[-_]", code)[0], code)) for code in codes}


def _validate_summary(training_summary: Any) -> tuple[dict[str, Any] | None, list[Mapping[str, Any]]]:
    """The schedule (or None) and the stage records of a trainer's training_summary.json."""
    if not isinstance(training_summary, Mapping):
        raise ValueError(f"training_summary is {type(training_summary).__name__}; {_SUMMARY_HELP}.")
    schedule = training_summary.get("schedule")
    stages = training_summary.get("stages") or []
    if schedule is not None and (not isinstance(schedule, Mapping) or not isinstance(schedule.get("stages"), list)):
        raise ValueError(f"training_summary['schedule'] has no list of 'stages'; {_SUMMARY_HELP}.")
    if not isinstance(stages, list):
        raise ValueError(f"training_summary['stages'] must be a list; {_SUMMARY_HELP}.")
    if schedule is None and not stages:
        raise ValueError(f"training_summary has neither 'schedule' nor 'stages'; {_SUMMARY_HELP}.")
    for where, entries in (("schedule['stages']", schedule["stages"] if schedule else []), ("stages", stages)):
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"training_summary {where}[{index}] has no 'name'; {_SUMMARY_HELP}.")
    return (dict(schedule) if schedule is not None else None), stages


def _data_table(data_summary: Any) -> dict[str, dict[str, float]]:
    """{column: {language or direction: hours}} of {task: {language or direction: hours}}, {language: {task: hours}}
    or {language: hours} (one column, "hours")."""
    if not isinstance(data_summary, Mapping) or not data_summary:
        raise ValueError(f"{_DATA_HELP}; got {data_summary!r}.")
    values = list(data_summary.values())
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        table = {"hours": dict(data_summary)}
    elif all(isinstance(v, Mapping) for v in values):
        if set(data_summary) <= set(TASKS):
            table = {task: dict(entries) for task, entries in data_summary.items()}
        else:
            table = {}
            for key, entries in data_summary.items():
                for task, hours in entries.items():
                    table.setdefault(task, {})[key] = hours
    else:
        raise ValueError(f"{_DATA_HELP}; got {data_summary!r}.")
    for column, entries in table.items():
        for key, hours in entries.items():
            if isinstance(hours, bool) or not isinstance(hours, numbers.Real) or not hours >= 0:
                raise ValueError(f"data_summary hours for {column!r} / {key!r} is {hours!r}; give a number >= 0.")
    return table


def _is_hub_id(name: Any) -> bool:
    try:
        validate_repo_id(name)  # huggingface_hub's own rules for "namespace/name"
    except HFValidationError:
        return False
    return isinstance(name, str)


def base_models_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The Hub ids the encoder and LLM were loaded from (`_name_or_path` of the sub-configs), when they look like
    Hub ids and not local folders: {"encoder": ..., "llm": ...}."""
    found = {}
    for role, key in (("encoder", "audio_config"), ("llm", "text_config")):
        name = (config.get(key) or {}).get("_name_or_path") or ""
        if "/" in name and _is_hub_id(name) and not os.path.exists(name):
            found[role] = name
    return found


def _split_base_models(base_models: Sequence[str] | Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """({"encoder"/"llm": id}, other ids) of `base_models`, checked to be Hub ids."""
    if isinstance(base_models, str):
        base_models = [base_models]
    roles = dict(base_models) if isinstance(base_models, Mapping) else {}
    if unknown_roles := set(roles) - {"encoder", "llm"}:
        raise ValueError(f"base_models keys must be 'encoder' and/or 'llm', got {sorted(unknown_roles)}.")
    for model_id in list(roles.values()) if roles else list(base_models or []):
        if not _is_hub_id(model_id):
            raise ValueError(
                f"base_models entry {model_id!r} is not a Hub model id; the Hub's `base_model` needs ids such as "
                "'Qwen/Qwen2.5-1.5B' (pass {'encoder': ..., 'llm': ...} to name their roles)."
            )
    return roles, [] if roles else list(dict.fromkeys(base_models or []))


def _run_file(folder: Path, name: str) -> Any:
    """The JSON content of `folder/name`, or None when it does not exist."""
    if not (folder / name).is_file():
        return None
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / name} is not valid JSON ({error}); fix or remove it.") from error


# --------------------------------------------------------------------------------------------------- the card
def build_model_card(
    output_dir: str | os.PathLike | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    training_summary: Mapping[str, Any] | None = None,
    languages: Sequence[str] | None = None,
    dataset_name: str | None = None,
    dataset_id: str | None = None,
    dataset_description: str | None = None,
    datasets: Sequence[str] | None = None,
    eval_datasets: Mapping[str, Any] | None = None,
    base_models: Sequence[str] | Mapping[str, str] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    data_summary: Mapping[str, Any] | None = None,
    baseline_metrics: Mapping[str, Any] | None = None,
    baseline_name: str = "baseline",
    synthetic_data: bool = False,
    limitations: Sequence[str] = (),
    tags: Sequence[str] = (),
    metric_key_prefix: str | None = "test",
    eval_split: str = "test",
    lora_config: Mapping[str, Any] | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """A Hub model card for a PART model. Inputs not given are read from the run folder `output_dir`, when given:
    `training_summary.json` (and `schedule.json`), the metrics (the first of `RESULTS_NAMES`), `data_summary.json` and
    the base models of `config.json`.

    Args:
        metrics: flat test metrics (see `parse_part_metrics`); training_summary: the trainer's training_summary.json.
        languages: ISO 639 codes of the model (default: those of the metrics, data summary and schedule).
        dataset_name, dataset_id: the test set's name and Hub id (`dataset_id` is also the front matter's `datasets`
            unless `datasets`, the Hub ids of the training data, is given); dataset_description: Markdown.
        eval_datasets: per-task test sets instead: {"asr": "google/fleurs", "s2tt": {"id", "name", "config"}}.
        base_models: Hub ids of the encoder and LLM, as a list or {"encoder": ..., "llm": ...}.
        model_name: default the repo's or the folder's name; repo_id: what the card's code examples load.
        data_summary: hours per task and language/direction (see `_data_table` for the accepted shapes).
        baseline_metrics, baseline_name: a comparison model's metrics, for a "change" column and the limitations.
        synthetic_data: the speech was synthesised (a limitation); limitations, tags: further ones.
        license: a Hub license id; metric_key_prefix: the metrics' key prefix (None: unprefixed keys only).
        eval_split: the split named in the model-index; lora_config: LoRA settings overriding the schedule's
            (`--lora_r`, `--lora_alpha`, `--lora_dropout` are not written into `schedule.json`).
        template_path: another Jinja template (default `TEMPLATE_PATH`).
    """
    folder = Path(output_dir) if output_dir is not None else None
    metrics_source = "metrics"
    if folder is not None:
        if not folder.is_dir():
            raise ValueError(f"output_dir {str(folder)!r} is not a folder; pass a finished PART run's output_dir.")
        training_summary = training_summary if training_summary is not None else _run_file(folder, SUMMARY_NAME)
        if isinstance(training_summary, Mapping) and "schedule" not in training_summary:
            if (schedule_file := _run_file(folder, SCHEDULE_NAME)) is not None:
                training_summary = {**training_summary, "schedule": schedule_file}
        if metrics is None and (found := next((n for n in RESULTS_NAMES if (folder / n).is_file()), None)):
            metrics, metrics_source = _run_file(folder, found), str(folder / found)
            if isinstance(metrics, Mapping) and isinstance(metrics.get("metrics"), Mapping):
                metrics = metrics["metrics"]
        data_summary = data_summary if data_summary is not None else _run_file(folder, DATA_SUMMARY_NAME)
        if base_models is None and (config := _run_file(folder, "config.json")) is not None:
            base_models = base_models_from_config(config) or None
    if metrics is None:
        where = f"put them in {folder}/results.json" if folder is not None else "pass output_dir= with results.json"
        raise ValueError(f"build_model_card needs the test metrics: pass metrics= or {where}. {_METRICS_HELP}.")
    if training_summary is None:
        where = f" ({folder}/{SUMMARY_NAME} does not exist)" if folder is not None else ""
        raise ValueError(
            "build_model_card needs the training summary: pass training_summary= (the dict of the "
            f"training_summary.json that PartTrainer.train() writes) or output_dir= of the run{where}."
        )
    schedule, stage_records = _validate_summary(training_summary)
    try:
        scores = parse_part_metrics(metrics, metric_key_prefix)
    except ValueError as error:
        raise ValueError(f"{metrics_source}: {error}") from None
    if baseline_metrics is not None:
        baseline = {(s.task, s.subject): s.value for s in parse_part_metrics(baseline_metrics, metric_key_prefix)}
        scores = [s._replace(baseline=baseline.get((s.task, s.subject))) for s in scores]
    rows = {task: [s for s in scores if s.task == task and s.subject is not None] for task in TASKS}
    if not isinstance(license, str) or not license:
        raise ValueError(f"license must be a Hub license id such as 'apache-2.0', got {license!r}.")
    if unknown_tasks := set(eval_datasets or {}) - set(EVAL_TASKS):
        raise ValueError(f"eval_datasets keys must be in {sorted(EVAL_TASKS)}, got {sorted(unknown_tasks)}.")
    data_table = _data_table(data_summary) if data_summary is not None else None

    # languages: the given ones, then those of the metrics, the schedule and the data summary (first seen order)
    found = [*(languages or []), *(s.subject for s in rows["asr"])]
    found += [lang for s in rows["s2tt"] + rows["mt"] for lang in split_direction(s.subject)]
    found += [lang for stage in (schedule or {}).get("stages", []) for lang in (stage.get("languages") or [])]
    for task_or_key, entries in (data_summary or {}).items():
        keys = entries.keys() if isinstance(entries, Mapping) and task_or_key in TASKS else [task_or_key]
        found += [part for key in keys for part in split_direction(str(key))]
    all_languages = [lang for lang in dict.fromkeys(found) if lang not in TASKS]
    iso_codes = list(dict.fromkeys(_iso_code(lang) for lang in all_languages))

    model_name = model_name or (repo_id.split("/")[-1] if repo_id else None)
    model_name = model_name or (folder.resolve().name if folder is not None else "part-speech-model")
    default_dataset = {
        "id": dataset_id or re.sub(r"[^a-z0-9]+", "-", (dataset_name or "part-test-set").lower()).strip("-")
        or "part-test-set",
        "name": dataset_name or dataset_id or "PART test set",
    }
    eval_sets = {
        task: _eval_dataset((eval_datasets or {}).get(task, default_dataset), task, eval_split) for task in EVAL_TASKS
    }
    eval_results = [
        EvalResult(
            task_type=EVAL_TASKS[task][0],
            task_name=EVAL_TASKS[task][1],
            **eval_sets[task],
            metric_type=s.metric,
            metric_value=s.value,
            metric_name=f"{s.metric.upper()} ({s.subject})",
        )
        for task in EVAL_TASKS
        for s in rows[task]
    ]
    roles, other_models = _split_base_models(base_models)
    card_data = ModelCardData(
        language=iso_codes,
        license=license,
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=[*DEFAULT_TAGS, *(["multilingual"] if len(iso_codes) > 1 else []), *tags],
        datasets=list(datasets) if datasets else ([dataset_id] if datasets is None and dataset_id else None),
        base_model=list(dict.fromkeys(roles.values())) or other_models or None,
        metrics=[m for m in ("wer", "cer", "bleu") if any(r.metric_type == m for r in eval_results)],
        model_name=model_name,
        eval_results=eval_results,
    )

    total_seconds = training_summary.get("total_seconds")
    if total_seconds is None and stage_records and all(s.get("seconds") is not None for s in stage_records):
        total_seconds = sum(s["seconds"] for s in stage_records)
    by_name = {s["name"]: s for s in stage_records}
    stages = [
        (stage, by_name.get(stage["name"]), sorted((int(k), v) for k, v in (stage.get("unfreeze_at") or {}).items()))
        for stage in (schedule["stages"] if schedule else stage_records)
    ]
    lora = next(
        (
            {**(stage.get("lora") or {}), **(lora_config or {})}
            for stage in (schedule or {}).get("stages", [])
            if "llm_lora" in (stage.get("trainable") or []) and (stage.get("lora") or lora_config)
        ),
        None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        model_id=repo_id or model_name,
        encoder_model=roles.get("encoder"),
        llm_model=roles.get("llm"),
        other_base_models=other_models,
        total_parameters=next((s["total_parameters"] for s in stage_records if s.get("total_parameters")), None),
        total_seconds=total_seconds,
        schedule=schedule,
        stages=stages,
        lora=lora,
        languages=all_languages,
        language_names=_language_names([*all_languages, *(s.subject for s in rows["asr"])]),
        dataset_name=dataset_name,
        dataset_description=dataset_description,
        synthetic_data=synthetic_data,
        data_table=data_table,
        data_keys=list(dict.fromkeys(key for entries in (data_table or {}).values() for key in entries)),
        eval_split=eval_split,
        eval_dataset_names=" and ".join(dict.fromkeys(d["dataset_name"] for t, d in eval_sets.items() if rows[t])),
        rows=rows,
        averages={s.task: s for s in scores if s.subject is None},
        baseline_name=baseline_name if baseline_metrics is not None else None,
        limitations=list(limitations),
    )


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Builds the card of the run in `output_dir` (see `build_model_card` for the arguments) and writes it as
    `output_dir/README.md`; returns that path."""
    path = Path(output_dir) / CARD_NAME
    build_model_card(output_dir, **kwargs).save(path)
    return path


__all__ = [
    "Score",
    "TEMPLATE_PATH",
    "base_models_from_config",
    "build_model_card",
    "parse_part_metrics",
    "split_direction",
    "write_model_card",
]
