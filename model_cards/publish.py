"""Publishing a finished PART run (model, remote code, processor, card) to the Hub: checked for completeness and by
`ModelCard.validate`, filtered like `upload_folder` (`filter_repo_objects`) and uploaded in one `HfApi.create_commit`
(`upload_folder` may split a large folder into several commits with `hf_xet`: a config without its weights)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .card import CARD_NAME

logger = logging.getLogger(__name__)

PUBLISH_IGNORE_PATTERNS = [
    "stage-*", "checkpoint-*", "*/checkpoint-*",  # the trainer's stage folders (stage models) and checkpoints
    ".incomplete", ".incomplete/*", "*/.incomplete/*", "*.tmp", "*.tmp/*",  # checkpoints being written
    "*.pt", "*.pth", "global_step*", "*/global_step*",  # optimizer, scheduler, RNG and DeepSpeed states
    "trainer_state.json", "training_args.bin", "runs/*", "wandb/*",  # trainer state, TensorBoard, W&B
    "*.ipynb_checkpoints*", "__pycache__/*", "*/__pycache__/*", "*.pyc",
]
"""What a run folder holds besides the model (`publish` adds `huggingface_hub`'s defaults: `.git`, `.cache`)."""

REMOTE_CODE_MODULES = ("modeling_part",)
"""Remote code every PART folder must carry, besides the modules its `auto_map`s name."""


def publish_files(output_dir: str | os.PathLike, ignore_patterns: Sequence[str] | None = None) -> list[str]:
    """The files of `output_dir` that `publish` uploads (paths relative to it, sorted): everything but
    `PUBLISH_IGNORE_PATTERNS`, `ignore_patterns` and `huggingface_hub`'s default ignores."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ValueError(f"output_dir {str(folder)!r} is not a folder; pass the folder of a finished PART run.")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    ignore = [*PUBLISH_IGNORE_PATTERNS, *(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
    return list(filter_repo_objects(files, ignore_patterns=ignore))


def _json(folder: Path, name: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        problems.append(f"{name} is not readable JSON ({error})")
        return None
    return data if isinstance(data, dict) else None


def _auto_map_modules(data: Any) -> set[str]:
    """Modules named by an `auto_map` (also nested ones, e.g. the processor's feature extractor)."""
    if not isinstance(data, dict):
        return set()
    modules = set().union(*(_auto_map_modules(value) for key, value in data.items() if key != "auto_map"))
    for reference in data["auto_map"].values() if isinstance(data.get("auto_map"), dict) else ():
        for name in reference if isinstance(reference, (list, tuple)) else [reference]:
            if isinstance(name, str) and "--" not in name and "." in name:  # "repo--mod.Class": another repository
                modules.add(name.rsplit(".", 1)[0])
    return modules


def missing_model_files(output_dir: str | os.PathLike, files: Iterable[str] | None = None) -> list[str]:
    """What keeps `output_dir` (its `files`, default `publish_files(output_dir)`) from being a loadable PART repository:
    `config.json` with an `auto_map`, the safetensors weights (every shard), the processor and tokenizer files, the
    remote code (the `auto_map`s' modules, `modeling_part.py` and what they import), a `README.md` that parses."""
    folder = Path(output_dir)
    present = set(publish_files(folder) if files is None else files)
    problems: list[str] = []

    config = _json(folder, "config.json", problems) if "config.json" in present else None
    if "config.json" not in present:
        problems.append("config.json (save the model with model.save_pretrained(output_dir))")
    elif config is not None and not {"AutoConfig", "AutoModelForSpeechSeq2Seq"} <= set(config.get("auto_map") or {}):
        problems.append(
            "an auto_map with AutoConfig and AutoModelForSpeechSeq2Seq in config.json (import modeling_part "
            "before save_pretrained: it registers the classes for trust_remote_code)"
        )

    if "model.safetensors.index.json" in present:
        index = _json(folder, "model.safetensors.index.json", problems) or {}
        shards = sorted(set((index.get("weight_map") or {}).values()))
        lost = [shard for shard in shards if shard not in present]
        if not shards or lost:
            problems.append(f"the weight shards of model.safetensors.index.json: {lost or 'the index lists none'}")
    elif "model.safetensors" not in present:
        lora = "adapter_config.json" in present
        hint = " (this looks like a LoRA adapter folder: save with lora_save_mode='merged')" if lora else ""
        problems.append(f"model weights: model.safetensors or a sharded model.safetensors.index.json{hint}")

    processor_files = [name for name in ("processor_config.json", "preprocessor_config.json") if name in present]
    if not processor_files:
        problems.append("processor_config.json or preprocessor_config.json (processor.save_pretrained(output_dir))")
    if "tokenizer_config.json" not in present or not present & {"tokenizer.json", "vocab.json", "tokenizer.model"}:
        problems.append(
            "tokenizer files: tokenizer_config.json and tokenizer.json (or vocab.json / tokenizer.model); "
            "processor.save_pretrained(output_dir) writes them"
        )

    modules = set(REMOTE_CODE_MODULES) | _auto_map_modules(config)
    for name in [*processor_files, *({"tokenizer_config.json"} & present)]:
        modules |= _auto_map_modules(_json(folder, name, problems))
    problems += _missing_code(folder, present, modules)

    if CARD_NAME not in present:
        problems.append(f"{CARD_NAME}, the model card (model_cards.write_model_card(output_dir, ...))")
    else:
        try:
            ModelCard((folder / CARD_NAME).read_text(encoding="utf-8"))
        except Exception as error:  # the Hub rejects a card whose front matter does not parse
            problems.append(f"a {CARD_NAME} whose front matter parses ({error})")
    return problems


def _missing_code(folder: Path, present: set[str], modules: set[str]) -> list[str]:
    """The remote code modules (and the modules they import relatively) that are not among the files."""
    from transformers.dynamic_module_utils import get_relative_imports

    missing, queue = [], sorted(modules)
    for module in queue:  # grows by the relative imports of the modules present
        path = f"{module.replace('.', '/')}.py"
        if path not in present:
            missing.append(path)
        else:
            queue += [name for name in sorted(get_relative_imports(str(folder / path))) if name not in queue]
    if not missing:
        return []
    return [
        f"remote code {', '.join(missing)} (model.save_pretrained / processor.save_pretrained copy it after "
        "`import modeling_part`)"
    ]


def publish(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str = "Upload PART model",
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    ignore_patterns: Sequence[str] | None = None,
    api: HfApi | None = None,
) -> CommitInfo:
    """Uploads the run folder `output_dir` (with the `README.md` of `write_model_card`) to the Hub model repository
    `repo_id` in one commit and returns its `CommitInfo`.

    The repository is created if needed (`private` applies to a new one). Everything but `PUBLISH_IGNORE_PATTERNS` and
    `ignore_patterns` (`fnmatch` patterns on relative paths) is uploaded; files only in the repository are kept.
    `token`, `commit_message`, `commit_description`, `revision`, `create_pr` are those of `HfApi.create_commit`; `api`
    is the `HfApi` to use. Raises ValueError, before anything is created, when `missing_model_files` finds something
    missing (the message lists it) or the Hub rejects the card's metadata (`ModelCard.validate`).
    """
    folder = Path(output_dir)
    files = publish_files(folder, ignore_patterns)
    problems = missing_model_files(folder, files)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(f"{folder} is not ready to publish; missing:\n{listed}")
    card = ModelCard.load(folder / CARD_NAME)
    if repo_id not in card.content:
        logger.warning(
            f"{CARD_NAME} does not mention {repo_id!r}: its code examples load another id. Rewrite it with "
            f"model_cards.write_model_card({str(folder)!r}, repo_id={repo_id!r}, ...) before publishing."
        )
    card.validate(repo_type="model")  # the Hub's metadata check (ValueError), before the repository is created

    api = api or HfApi(token=token)
    repo_url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files]
    logger.info(f"Uploading {len(operations)} files of {folder} to {repo_url.repo_id} in one commit.")
    return api.create_commit(
        repo_id=repo_url.repo_id,
        repo_type="model",
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )


__all__ = ["PUBLISH_IGNORE_PATTERNS", "missing_model_files", "publish", "publish_files"]
