"""Hub model cards for PART runs: fills `template.md` from a run's training summary and its test metrics.

`build_model_card` returns a `huggingface_hub.ModelCard`. Its front matter follows the Hub's conventions (languages,
license, base models, tags, and a `model-index` with the measured WER/CER/BLEU, built with `EvalResult`s), and its body
holds the stage schedule, the training data and the per-language and per-direction results. `write_model_card`
reads a run's output folder and writes the card there as `README.md`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).resolve().parent / "template.md"
"""The Jinja template of the card (the format `huggingface_hub.ModelCard.from_template` renders)."""

SUMMARY_NAME = "training_summary.json"
SCHEDULE_NAME = "schedule.json"
DATA_SUMMARY_NAME = "data_summary.json"
CARD_NAME = "README.md"
RESULTS_NAMES = ("results.json", "test_results.json", "all_results.json", "metrics.json")
"""Files of a run folder that `write_model_card` reads the test metrics from (the first one present)."""

DEFAULT_TAGS = ("speech-translation", "speech-llm", "part", "audio", "speech")
TASK_LABELS = {"asr": "ASR", "s2tt": "S2TT", "mt": "MT (text)"}
EVAL_TASKS = {
    "asr": ("automatic-speech-recognition", "Speech Recognition"),
    "s2tt": ("translation", "Speech Translation"),
}
"""PART task -> (Hub task type, task name) of its `model-index` result."""

_ASR_KEY = re.compile(r"(?P<metric>wer|cer)_(?P<language>[A-Za-z0-9][A-Za-z0-9_-]*)")
_BLEU_KEY = re.compile(r"(?P<task>bleu|mt_bleu)_(?P<direction>[A-Za-z0-9][A-Za-z0-9_-]*)")
_AVERAGE_KEYS = ("asr_avg_error", "s2tt_avg_bleu", "mt_avg_bleu")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")
_ISO_639 = re.compile(r"[a-z]{2,3}")
_METRICS_HELP = (
    "Pass the flat dict of PartTrainer.evaluate_generation / trainers.metrics.compute_speech_metrics: "
    "`test_wer_<lang>` or `test_cer_<lang>` per ASR language and `test_bleu_<src>-<tgt>` per translation "
    "direction (the `test_` prefix is optional), e.g. "
    "{'test_wer_de': 12.3, 'test_cer_zh': 8.1, 'test_bleu_de-en': 21.4}"
)


# ------------------------------------------------------------------------------------------------------ metrics
@dataclass
class PartResults:
    """The PART test metrics of one model.

    Args:
        asr: language -> (`"wer"` or `"cer"`, value in %).
        s2tt: direction `"<src>-<tgt>"` -> BLEU.
        mt: direction -> BLEU of text-only translation (the auxiliary `mt` task).
        asr_avg_error, s2tt_avg_bleu, mt_avg_bleu: unweighted averages (given, or computed from the entries).
    """

    asr: dict[str, tuple[str, float]] = field(default_factory=dict)
    s2tt: dict[str, float] = field(default_factory=dict)
    mt: dict[str, float] = field(default_factory=dict)
    asr_avg_error: float | None = None
    s2tt_avg_bleu: float | None = None
    mt_avg_bleu: float | None = None

    @property
    def languages(self) -> list[str]:
        """Every language the results name: ASR languages, then translation sources and targets."""
        found = list(self.asr)
        for direction in [*self.s2tt, *self.mt]:
            found += split_direction(direction)
        return list(dict.fromkeys(found))


def split_direction(direction: str) -> tuple[str, str]:
    """`"de-en"` -> `("de", "en")`; with more hyphens, the first and last parts."""
    parts = direction.split("-")
    return (parts[0], parts[-1]) if len(parts) > 1 else (direction, direction)


def _is_part_metric(name: str) -> bool:
    return name in _AVERAGE_KEYS or bool(_ASR_KEY.fullmatch(name) or _BLEU_KEY.fullmatch(name))


def _metric_value(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"Metric {key!r} is {value!r}; metric values must be finite numbers (percent / BLEU).")
    return float(value)


def parse_part_metrics(metrics: Mapping[str, Any], metric_key_prefix: str | None = "test") -> PartResults:
    """Reads WER/CER per language and BLEU per direction from a flat metrics dict.

    Keys are `<prefix>_wer_<lang>`, `<prefix>_cer_<lang>`, `<prefix>_bleu_<src>-<tgt>`, `<prefix>_mt_bleu_<src>-<tgt>`
    and the averages `<prefix>_asr_avg_error`, `<prefix>_s2tt_avg_bleu`, `<prefix>_mt_avg_bleu`; the prefix is optional
    (a prefixed key wins over the same key without it). Other keys (loss, runtime, sample counts) are ignored.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}. {_METRICS_HELP}.")
    prefix = f"{metric_key_prefix}_" if metric_key_prefix else ""
    found: dict[str, float] = {}
    prefixed: set[str] = set()
    other_prefixes: set[str] = set()
    for key, value in metrics.items():
        if prefix and key.startswith(prefix) and _is_part_metric(key[len(prefix):]):
            name = key[len(prefix):]
            prefixed.add(name)
        elif _is_part_metric(key):
            name = key
            if name in prefixed:
                continue
        else:
            head, _, rest = key.partition("_")
            if rest and _is_part_metric(rest):
                other_prefixes.add(head)
            continue
        found[name] = _metric_value(key, value)

    results = PartResults()
    for name, value in found.items():
        if asr := _ASR_KEY.fullmatch(name):
            language = asr["language"]
            if language in results.asr and results.asr[language][0] != asr["metric"]:
                raise ValueError(f"Language {language!r} has both a WER and a CER; pass one error rate per language.")
            results.asr[language] = (asr["metric"], value)
        elif bleu := _BLEU_KEY.fullmatch(name):
            (results.s2tt if bleu["task"] == "bleu" else results.mt)[bleu["direction"]] = value
    if not (results.asr or results.s2tt):
        hint = ""
        if other_prefixes:
            first = sorted(other_prefixes)[0]
            hint = f" Keys with the prefix {sorted(other_prefixes)} were found: pass metric_key_prefix={first!r}."
        raise ValueError(
            f"No ASR or speech translation metrics in metrics (keys: {sorted(metrics)[:12]}). {_METRICS_HELP}.{hint}"
        )
    results.asr_avg_error = found.get("asr_avg_error", _mean(v for _, v in results.asr.values()))
    results.s2tt_avg_bleu = found.get("s2tt_avg_bleu", _mean(results.s2tt.values()))
    results.mt_avg_bleu = found.get("mt_avg_bleu", _mean(results.mt.values()))
    return results


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class EvalDataset:
    """The test set of one task, as the `model-index` names it."""

    id: str
    name: str
    config: str | None = None
    split: str = "test"

    @classmethod
    def coerce(cls, value: Any, task: str, split: str) -> EvalDataset:
        if isinstance(value, EvalDataset):
            return value
        if isinstance(value, str):
            return cls(id=value, name=value, split=split)
        if isinstance(value, Mapping) and "id" in value:
            return cls(
                id=str(value["id"]),
                name=str(value.get("name", value["id"])),
                config=value.get("config"),
                split=str(value.get("split", split)),
            )
        raise ValueError(
            f"eval_datasets[{task!r}] is {value!r}; give a Hub dataset id or a dict "
            "{'id': 'google/fleurs', 'name': 'FLEURS', 'config': ..., 'split': 'test'}."
        )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part-test-set"


# ------------------------------------------------------------------------------------------------- formatting
def _cell(value: Any) -> str:
    """Text for a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _count(n: int | None) -> str:
    if n is None:
        return "—"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(int(n))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _change(value: float | None, baseline: float | None) -> str:
    if value is None or baseline is None:
        return "—"
    return f"{round(value - baseline, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def _groups_text(stage: Mapping[str, Any]) -> str:
    k = stage.get("encoder_last_k", 8)
    labels = {
        "adapter": "adapter",
        "encoder": "encoder",
        "encoder_last_k": f"encoder (top {k} layers)",
        "llm": "LLM (all weights)",
        "llm_lora": "LLM (LoRA)",
    }
    groups = stage.get("trainable") or stage.get("trainable_groups") or []
    text = " + ".join(labels.get(g, g) for g in groups) or "—"
    for step, later in sorted((int(s), g) for s, g in (stage.get("unfreeze_at") or {}).items()):
        text += f"; + {' + '.join(labels.get(g, g) for g in later)} from step {step}"
    return text


def _tasks_text(stage: Mapping[str, Any]) -> str:
    tasks = stage.get("tasks") or {}
    if isinstance(tasks, Sequence) and not isinstance(tasks, str):
        tasks = {task: 1.0 for task in tasks}
    weights = set(tasks.values())
    if len(weights) <= 1:
        text = " + ".join(TASK_LABELS.get(t, t) for t in tasks)
    else:
        text = " + ".join(TASK_LABELS.get(t, t) + (f" ×{w:g}" if w != 1 else "") for t, w in tasks.items())
    if stage.get("languages"):
        text += f" ({', '.join(stage['languages'])} only)"
    return text or "—"


def _steps_text(stage: Mapping[str, Any], summary: Mapping[str, Any] | None) -> str:
    if summary and summary.get("steps") is not None:
        return f"{int(summary['steps']):,}"
    if stage.get("steps") is not None:
        return f"{int(stage['steps']):,}"
    if stage.get("fraction") is not None:
        return f"{float(stage['fraction']):.0%} of max_steps"
    if stage.get("epochs") is not None:
        return f"{float(stage['epochs']):g} epochs"
    return "—"


def _language_name(code: str) -> str:
    try:  # the processor's names; importing modeling_part is the expensive part, so only when a card is built
        from modeling_part.processing_part import LANGUAGE_NAMES
    except ImportError:  # pragma: no cover - the package ships both
        LANGUAGE_NAMES = {}
    return LANGUAGE_NAMES.get(code, LANGUAGE_NAMES.get(code.split("-")[0].split("_")[0], code))


def _iso_code(language: str) -> str:
    base = str(language).strip().lower().replace("_", "-").split("-")[0]
    if not _ISO_639.fullmatch(base):
        raise ValueError(
            f"Language {language!r} is not an ISO 639 code; the Hub's `language` field needs two- or three-letter "
            "codes: pass languages=['de', 'zh', 'yue', ...]."
        )
    return base


# ------------------------------------------------------------------------------------------ training summary
def _validate_summary(training_summary: Any) -> tuple[dict[str, Any] | None, list[Mapping[str, Any]]]:
    """The schedule (or None) and the stage summaries of a trainer's training_summary.json."""
    help_text = (
        "pass the trainer's training_summary.json (written by PartTrainer.train()) as a dict with "
        "'schedule': {'name', 'stages': [{'name', 'trainable', 'tasks', 'steps' | 'fraction', ...}]} and/or "
        "'stages': [{'name', 'steps', 'trainable_parameters', 'total_parameters', 'first_loss', 'last_loss', "
        "'seconds'}]"
    )
    if not isinstance(training_summary, Mapping):
        raise ValueError(f"training_summary is {type(training_summary).__name__}; {help_text}.")
    schedule = training_summary.get("schedule")
    stages = training_summary.get("stages") or []
    if schedule is not None and (not isinstance(schedule, Mapping) or not isinstance(schedule.get("stages"), list)):
        raise ValueError(f"training_summary['schedule'] has no list of 'stages'; {help_text}.")
    if not isinstance(stages, list):
        raise ValueError(f"training_summary['stages'] must be a list; {help_text}.")
    if schedule is None and not stages:
        raise ValueError(f"training_summary has neither 'schedule' nor 'stages'; {help_text}.")
    for where, entries in (("schedule['stages']", schedule["stages"] if schedule else []), ("stages", stages)):
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"training_summary {where}[{index}] has no 'name'; {help_text}.")
    return (dict(schedule) if schedule is not None else None), stages


def _stage_rows(schedule: Mapping[str, Any] | None, summaries: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    by_name = {s["name"]: s for s in summaries}
    stages = schedule["stages"] if schedule else summaries
    rows = []
    for index, stage in enumerate(stages, start=1):
        summary = by_name.get(stage["name"])
        trainable, total = (summary or {}).get("trainable_parameters"), (summary or {}).get("total_parameters")
        params = _count(trainable)
        if trainable is not None and total:
            params += f" ({100 * trainable / total:.1f}%)"
        first, last = (summary or {}).get("first_loss"), (summary or {}).get("last_loss")
        learning_rate = (summary or {}).get("learning_rate", stage.get("learning_rate"))  # the one used, if known
        if learning_rate is not None:
            learning_rate = f"{learning_rate:g}"
        elif stage.get("lr_scale", 1.0) != 1.0:
            learning_rate = f"{stage['lr_scale']:g} × run default"
        else:
            learning_rate = "run default" if schedule else "—"
        rows.append(
            {
                "index": str(index),
                "name": _cell(stage["name"]),
                "trainable": _cell(_groups_text(stage)),
                "tasks": _cell(_tasks_text(stage)),
                "steps": _steps_text(stage, summary) if summary or schedule else "—",
                "learning_rate": learning_rate,
                "trainable_parameters": params,
                "loss": f"{first:.3f} → {last:.3f}" if first is not None and last is not None else "—",
                "time": _duration(summary.get("seconds")) if summary else "not run",
            }
        )
    return rows


def _lora_text(schedule: Mapping[str, Any] | None, lora_config: Mapping[str, Any] | None = None) -> str | None:
    """The LoRA settings: `lora_config` (the run's effective settings) over the schedule's."""
    for stage in (schedule or {}).get("stages", []):
        if "llm_lora" in (stage.get("trainable") or []) and (stage.get("lora") or lora_config):
            lora = {**(stage.get("lora") or {}), **(lora_config or {})}
            parts = [f"rank {lora['r']}"] if "r" in lora else []
            for key in ("lora_alpha", "lora_dropout"):
                if key in lora:
                    parts.append(f"{key.replace('lora_', '')} {lora[key]}")
            if lora.get("target_modules"):
                parts.append(f"targets {', '.join(map(str, lora['target_modules']))}")
            return ", ".join(parts) or json.dumps(lora)
    return None


# ----------------------------------------------------------------------------------------------- data summary
def _data_table(data_summary: Mapping[str, Any]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(key header, columns, rows) of the hours table. Accepts {task: {language or direction: hours}},
    {language: {task: hours}} or {language: hours}."""
    help_text = (
        "data_summary must map task -> {language or direction: hours} (e.g. {'asr': {'de': 120.0}, "
        "'s2tt': {'de-en': 40.0}}), language -> {task: hours}, or language -> hours"
    )
    if not isinstance(data_summary, Mapping) or not data_summary:
        raise ValueError(f"{help_text}; got {data_summary!r}.")
    values = list(data_summary.values())
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        table = {"hours": dict(data_summary)}
    elif all(isinstance(v, Mapping) for v in values):
        if set(data_summary) <= set(TASK_LABELS):
            table = {task: dict(entries) for task, entries in data_summary.items()}
        else:
            table = {}
            for key, entries in data_summary.items():
                for task, hours in entries.items():
                    table.setdefault(task, {})[key] = hours
    else:
        raise ValueError(f"{help_text}; got {data_summary!r}.")
    keys = list(dict.fromkeys(key for entries in table.values() for key in entries))
    columns = list(table)
    for column, entries in table.items():
        for key, hours in entries.items():
            if isinstance(hours, bool) or not isinstance(hours, numbers.Real) or not hours >= 0:
                raise ValueError(f"data_summary hours for {column!r} / {key!r} is {hours!r}; give a number >= 0.")
    rows = [
        {"key": _cell(key), "cells": [f"{table[c][key]:,.1f}" if key in table[c] else "—" for c in columns]}
        for key in keys
    ]
    if len(keys) > 1:
        rows.append({"key": "**total**", "cells": [f"**{sum(table[c].values()):,.1f}**" for c in columns]})
    labels = [f"{TASK_LABELS.get(c, c)} hours" if c != "hours" else "hours" for c in columns]
    return "language / direction", labels, rows


# ---------------------------------------------------------------------------------------------- run folder
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it.") from error


def _metrics_from_file(path: Path) -> Mapping[str, Any]:
    data = _read_json(path)
    if isinstance(data, Mapping) and isinstance(data.get("metrics"), Mapping):
        data = data["metrics"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds {type(data).__name__}; expected a flat dict of metrics. {_METRICS_HELP}.")
    return data


def base_models_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    """The Hub ids the encoder and LLM were loaded from (`_name_or_path` of the sub-configs), when they look like
    Hub ids and not local folders: {"encoder": ..., "llm": ...}."""
    found = {}
    for role, key in (("encoder", "audio_config"), ("llm", "text_config")):
        name = (config.get(key) or {}).get("_name_or_path") or ""
        if "/" in name and _HUB_ID.fullmatch(name) and not os.path.exists(name):
            found[role] = name
    return found


def _split_base_models(base_models: Sequence[str] | Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    if base_models is None:
        return {}, []
    if isinstance(base_models, str):
        base_models = [base_models]
    roles = dict(base_models) if isinstance(base_models, Mapping) else {}
    unknown_roles = set(roles) - {"encoder", "llm"}
    if unknown_roles:
        raise ValueError(f"base_models keys must be 'encoder' and/or 'llm', got {sorted(unknown_roles)}.")
    ids = list(roles.values()) if roles else list(base_models)
    for model_id in ids:
        if not isinstance(model_id, str) or not _HUB_ID.fullmatch(model_id):
            raise ValueError(
                f"base_models entry {model_id!r} is not a Hub model id; the Hub's `base_model` needs ids such as "
                "'Qwen/Qwen2.5-1.5B' (pass {'encoder': ..., 'llm': ...} to name their roles)."
            )
    others = [m for m in ids if m not in roles.values()]
    return roles, others


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
    """A Hub model card for a PART model.

    Inputs not given are read from `output_dir` when it is: `training_summary.json` (and `schedule.json` if the summary
    lacks the schedule), the metrics from the first of `results.json`, `test_results.json`, `all_results.json`,
    `metrics.json`, the hours table from `data_summary.json`, and the base models from `config.json`.

    Args:
        output_dir: a finished run's folder (optional when everything else is passed).
        metrics: flat test metrics: `test_wer_<lang>` / `test_cer_<lang>`, `test_bleu_<src>-<tgt>`, `test_mt_bleu_...`,
            `test_asr_avg_error`, `test_s2tt_avg_bleu` (the prefix `metric_key_prefix` is optional).
        training_summary: the trainer's `training_summary.json` as a dict.
        languages: ISO 639 codes the model was trained on (default: those in the metrics, data summary and schedule).
        dataset_name, dataset_id: the test set's pretty name and Hub id (or a local identifier); `dataset_id` also goes
            into the front matter's `datasets` unless `datasets` is given.
        dataset_description: Markdown describing the training data.
        datasets: Hub ids of the training datasets (front matter `datasets`).
        eval_datasets: per-task test sets overriding `dataset_name`/`dataset_id`: {"asr": "google/fleurs",
            "s2tt": {"id": "facebook/covost2", "name": "CoVoST 2", "config": ...}}.
        base_models: Hub ids of the encoder and LLM, as a list or {"encoder": ..., "llm": ...}.
        model_name: the name in the card and the model-index (default: the repo's or the folder's name).
        repo_id: the Hub repository the card's code examples load from.
        license: a Hub license id.
        data_summary: hours per task and language/direction (see `_data_table` for the accepted shapes).
        baseline_metrics, baseline_name: metrics of a comparison model (e.g. the Baseline-2stage run) for a "change"
            column and the limitations (which languages did not improve).
        synthetic_data: the training/test speech was synthesised (adds the corresponding limitation).
        limitations: further limitation bullet points.
        tags: further Hub tags.
        metric_key_prefix: the metrics' key prefix (`"test"`; `None` for unprefixed keys only).
        eval_split: the split name recorded in the model-index.
        lora_config: the LoRA settings the run used, where they differ from the schedule's (`--lora_r`,
            `--lora_alpha`, `--lora_dropout` override the schedule but are not written into `schedule.json`).
        template_path: another Jinja template (default: `model_cards/template.md`).
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
        if metrics is None:
            metrics_source = next((name for name in RESULTS_NAMES if (folder / name).is_file()), metrics_source)
            metrics = _metrics_from_file(folder / metrics_source) if metrics_source in RESULTS_NAMES else None
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
    schedule, stage_summaries = _validate_summary(training_summary)
    try:
        results = parse_part_metrics(metrics, metric_key_prefix)
    except ValueError as error:
        raise ValueError(f"{metrics_source}: {error}") from None
    baseline = parse_part_metrics(baseline_metrics, metric_key_prefix) if baseline_metrics is not None else None
    if not isinstance(license, str) or not license:
        raise ValueError(f"license must be a Hub license id such as 'apache-2.0', got {license!r}.")
    unknown_tasks = set(eval_datasets or {}) - set(EVAL_TASKS)
    if unknown_tasks:
        raise ValueError(f"eval_datasets keys must be in {sorted(EVAL_TASKS)}, got {sorted(unknown_tasks)}.")

    data_table = _data_table(data_summary) if data_summary is not None else None
    all_languages = _card_languages(languages, results, schedule, data_summary)
    iso_codes = list(dict.fromkeys(_iso_code(lang) for lang in all_languages))
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else None)
    model_name = model_name or (folder.resolve().name if folder is not None else "part-speech-model")
    default_dataset = EvalDataset(
        id=dataset_id or _slug(dataset_name or "part-test-set"),
        name=dataset_name or dataset_id or "PART test set",
        split=eval_split,
    )
    per_task = {
        task: EvalDataset.coerce((eval_datasets or {}).get(task, default_dataset), task, eval_split)
        for task in EVAL_TASKS
    }
    roles, other_models = _split_base_models(base_models)
    if datasets is None and dataset_id:
        datasets = [dataset_id]

    eval_results = _eval_results(results, per_task)
    card_data = ModelCardData(
        language=iso_codes,
        license=license,
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=[*DEFAULT_TAGS, *(["multilingual"] if len(iso_codes) > 1 else []), *tags],
        datasets=list(datasets) if datasets else None,
        base_model=list(dict.fromkeys([*roles.values(), *other_models])) or None,
        metrics=[m for m in ("wer", "cer", "bleu") if any(r.metric_type == m for r in eval_results)],
        model_name=model_name,
        eval_results=eval_results,
    )

    total_parameters = next((s.get("total_parameters") for s in stage_summaries if s.get("total_parameters")), None)
    total_seconds = training_summary.get("total_seconds")
    if total_seconds is None and stage_summaries and all(s.get("seconds") is not None for s in stage_summaries):
        total_seconds = sum(s["seconds"] for s in stage_summaries)
    example_language, example_source, example_target = _examples(results, all_languages)
    evaluated = {"asr": results.asr, "s2tt": results.s2tt}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        model_id=repo_id or model_name,
        license_label="Apache 2.0" if license == "apache-2.0" else license,
        encoder_model=roles.get("encoder"),
        llm_model=roles.get("llm"),
        other_base_models=other_models,
        total_parameters=f"{_count(total_parameters)} ({total_parameters:,})" if total_parameters else None,
        total_time=_duration(total_seconds) if total_seconds is not None else None,
        schedule_name=(schedule or {}).get("name", "custom"),
        stages=_stage_rows(schedule, stage_summaries),
        lora=_lora_text(schedule, lora_config),
        language_list=", ".join(f"{_language_name(lang)} (`{lang}`)" for lang in all_languages),
        dataset_description=dataset_description or _default_data_description(dataset_name, synthetic_data),
        data_key_header=data_table[0] if data_table else None,
        data_columns=data_table[1] if data_table else None,
        data_rows=data_table[2] if data_table else None,
        eval_split=eval_split,
        eval_dataset_names=" and ".join(dict.fromkeys(d.name for task, d in per_task.items() if evaluated[task])),
        baseline_name=_cell(baseline_name) if baseline else None,
        example_language=example_language,
        example_source=example_source,
        example_target=example_target,
        limitations=_limitations(
            results, baseline, baseline_name, all_languages, total_parameters, synthetic_data, limitations
        ),
        **_result_tables(results, baseline),
    )


def _run_file(folder: Path, name: str) -> Any:
    """The JSON content of `folder/name`, or None when it does not exist."""
    return _read_json(folder / name) if (folder / name).is_file() else None


def _card_languages(
    languages: Sequence[str] | None,
    results: PartResults,
    schedule: Mapping[str, Any] | None,
    data_summary: Mapping[str, Any] | None,
) -> list[str]:
    """The given languages, then those the metrics, the schedule and the data summary name (first seen order)."""
    scheduled = [lang for stage in (schedule or {}).get("stages", []) for lang in (stage.get("languages") or [])]
    in_data = []
    for task_or_key, entries in (data_summary or {}).items():
        keys = entries.keys() if isinstance(entries, Mapping) and task_or_key in TASK_LABELS else [task_or_key]
        in_data += [part for key in keys for part in split_direction(str(key))]
    found = dict.fromkeys([*(languages or []), *results.languages, *scheduled, *in_data])
    return [lang for lang in found if lang not in TASK_LABELS]


def _eval_results(results: PartResults, per_task: Mapping[str, EvalDataset]) -> list[EvalResult]:
    """The model-index entries: WER/CER per ASR language, BLEU per S2TT direction (the averages stay in the body:
    the ASR one may mix WER and CER)."""
    entries = [
        _eval_result("asr", per_task["asr"], metric, value, f"{metric.upper()} ({language})")
        for language, (metric, value) in results.asr.items()
    ]
    entries += [
        _eval_result("s2tt", per_task["s2tt"], "bleu", value, f"BLEU ({direction})")
        for direction, value in results.s2tt.items()
    ]
    return entries


def _result_tables(results: PartResults, baseline: PartResults | None) -> dict[str, Any]:
    """Template variables of the evaluation section: rows per language/direction and the averages."""
    asr_metrics = sorted({metric for metric, _ in results.asr.values()}, reverse=True)  # wer before cer
    cer_languages = [lang for lang, (metric, _) in results.asr.items() if metric == "cer"]
    tables: dict[str, Any] = {
        "asr_rows": [
            {
                "language": _cell(f"{_language_name(lang)} (`{lang}`)"),
                "metric": metric.upper(),
                "value": _score(value),
                "baseline": _score(_asr_value(baseline, lang)),
                "change": _change(value, _asr_value(baseline, lang)),
            }
            for lang, (metric, value) in results.asr.items()
        ],
        "asr_average": None,
        "asr_metric_names": (
            f"WER (CER for {', '.join(cer_languages)})"
            if asr_metrics == ["wer", "cer"]
            else "/".join(m.upper() for m in asr_metrics)
        ),
        "average_note": (
            "Averages are unweighted means over languages (ASR) and directions (translation), as in the paper"
            + ("; the ASR average mixes WER and CER." if len(asr_metrics) > 1 else ".")
        ),
    }
    if results.asr:
        baseline_average = baseline.asr_avg_error if baseline else None
        tables["asr_average"] = {
            "metric": "/".join(m.upper() for m in asr_metrics),
            "value": _score(results.asr_avg_error),
            "baseline": _score(baseline_average),
            "change": _change(results.asr_avg_error, baseline_average),
        }
    for task in ("s2tt", "mt"):
        rows, average = _bleu_rows(
            getattr(results, task),
            getattr(results, f"{task}_avg_bleu"),
            getattr(baseline, task) if baseline else {},
            getattr(baseline, f"{task}_avg_bleu") if baseline else None,
        )
        tables[f"{task}_rows"], tables[f"{task}_average"] = rows, average
    return tables


def _eval_result(task: str, dataset: EvalDataset, metric: str, value: float, name: str) -> EvalResult:
    task_type, task_name = EVAL_TASKS[task]
    return EvalResult(
        task_type=task_type,
        task_name=task_name,
        dataset_type=dataset.id,
        dataset_name=dataset.name,
        dataset_config=dataset.config,
        dataset_split=dataset.split,
        metric_type=metric,
        metric_value=value,
        metric_name=name,
    )


def _asr_value(results: PartResults | None, language: str) -> float | None:
    return results.asr[language][1] if results is not None and language in results.asr else None


def _bleu_rows(scores, average, baseline_scores, baseline_average):
    rows = [
        {
            "direction": _cell(direction.replace("-", " → ", 1) if direction.count("-") == 1 else direction),
            "value": _score(value),
            "baseline": _score(baseline_scores.get(direction)),
            "change": _change(value, baseline_scores.get(direction)),
        }
        for direction, value in scores.items()
    ]
    summary = (
        {"value": _score(average), "baseline": _score(baseline_average), "change": _change(average, baseline_average)}
        if scores
        else None
    )
    return rows, summary


def _examples(results: PartResults, languages: list[str]) -> tuple[str, str, str]:
    """A language for the ASR example and a direction for the translation example."""
    language = next(iter(results.asr), languages[0] if languages else "en")
    if results.s2tt:
        source, target = split_direction(next(iter(results.s2tt)))
    else:
        source, target = language, next((lang for lang in languages if lang != language), "en")
    return language, source, target


def _default_data_description(dataset_name: str | None, synthetic_data: bool) -> str:
    text = f"Trained on {dataset_name}." if dataset_name else "The training data was not described for this card."
    if synthetic_data:
        text += " The speech is synthetic (text-to-speech), not recorded."
    return text


def _limitations(
    results: PartResults,
    baseline: PartResults | None,
    baseline_name: str,
    languages: list[str],
    total_parameters: int | None,
    synthetic_data: bool,
    extra: Sequence[str],
) -> list[str]:
    items = []
    if synthetic_data:
        items.append(
            "Trained and evaluated on synthetic speech (text-to-speech of a small corpus). The scores say nothing "
            "about real recordings, speakers, accents or noise: this checkpoint demonstrates the training recipe, "
            "it is not a usable recognizer or translator."
        )
    if total_parameters and total_parameters < 1e9:
        items.append(
            f"A small model ({_count(total_parameters)} parameters), far smaller than the paper's PART-2B and "
            "PART-8B; its scores are not comparable with the paper's."
        )
    directions = ", ".join(results.s2tt) or "none"
    items.append(
        f"Covers only {', '.join(languages)} (translation directions evaluated: {directions}). Speech in another "
        "language, or a direction it was not trained on, gives unreliable output."
    )
    not_evaluated = [lang for lang in languages if lang not in results.asr]
    if results.asr and not_evaluated:
        items.append(f"Not evaluated for ASR: {', '.join(not_evaluated)}.")
    if baseline is not None:
        worse = [
            f"{lang} ({metric.upper()} {value:.2f} vs {baseline.asr[lang][1]:.2f})"
            for lang, (metric, value) in results.asr.items()
            if lang in baseline.asr and value > baseline.asr[lang][1]
        ]
        worse += [
            f"{direction} (BLEU {value:.2f} vs {baseline.s2tt[direction]:.2f})"
            for direction, value in results.s2tt.items()
            if direction in baseline.s2tt and value < baseline.s2tt[direction]
        ]
        if worse:
            items.append(f"Not every language improves over {baseline_name}: worse for {'; '.join(worse)}.")
        else:
            items.append(f"Every evaluated language and direction is at least as good as {baseline_name} here.")
    else:
        items.append(
            "Not every language improves with PART: the paper reports languages that get slightly worse in some "
            "settings (e.g. Korean in one ablation). Check the table above for the languages you need."
        )
    items.append(
        "The prompt must name the spoken language (there is no language identification), and long recordings must "
        "be cut into segments (the processor rejects audio over its `max_audio_seconds`, 30 s by default)."
    )
    items.append(
        "Like other speech LLMs it can produce fluent text that is not in the audio, especially for silence, noise "
        "or music."
    )
    return [*items, *extra]


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Builds the card of the run in `output_dir` (see `build_model_card` for the arguments) and writes it as
    `output_dir/README.md`; returns that path."""
    card = build_model_card(output_dir, **kwargs)
    path = Path(output_dir) / CARD_NAME
    card.save(path)
    return path


__all__ = [
    "EvalDataset",
    "PartResults",
    "TEMPLATE_PATH",
    "base_models_from_config",
    "build_model_card",
    "parse_part_metrics",
    "split_direction",
    "write_model_card",
]
