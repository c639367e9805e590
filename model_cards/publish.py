"""Publishing a finished PART run to the Hugging Face Hub: the model with its remote code, the processor and the
model card, checked for completeness (locally) and the card's metadata by the Hub (`ModelCard.validate`) first, then
uploaded in one commit.

The files are chosen with `huggingface_hub`'s own pattern filter (`filter_repo_objects`, as `upload_folder` does) and
committed with one `HfApi.create_commit`. `upload_folder` is not used because with `hf_xet` installed it streams a
large folder in several commits, and a model repository must never show a config without its weights.
"""

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
    "stage-*",  # the trainer's stage folders: stage models, checkpoints, stage_complete.json
    "checkpoint-*",
    "*/checkpoint-*",
    ".incomplete",  # checkpoints being written
    ".incomplete/*",
    "*/.incomplete/*",
    "*.tmp",
    "*.tmp/*",
    "*.pt",  # optimizer, scheduler and RNG states
    "*.pth",
    "global_step*",  # DeepSpeed states
    "*/global_step*",
    "trainer_state.json",
    "training_args.bin",
    "runs/*",  # TensorBoard, W&B
    "wandb/*",
    "*.ipynb_checkpoints*",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
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


def _auto_map_modules(data: dict[str, Any] | None) -> set[str]:
    """Modules named by an `auto_map` (also nested ones, e.g. the processor's feature extractor)."""
    modules: set[str] = set()
    if not isinstance(data, dict):
        return modules
    references = []
    for key, value in data.items():
        if key == "auto_map" and isinstance(value, dict):
            for reference in value.values():
                references += reference if isinstance(reference, (list, tuple)) else [reference]
        elif isinstance(value, dict):
            modules |= _auto_map_modules(value)
    for reference in references:
        if isinstance(reference, str) and "--" not in reference and "." in reference:  # "repo--mod.Class": elsewhere
            modules.add(reference.rsplit(".", 1)[0])
    return modules


def missing_model_files(output_dir: str | os.PathLike, files: Iterable[str] | None = None) -> list[str]:
    """What keeps `output_dir` from being a complete, loadable PART repository (empty: ready to publish).

    Checks, among `files` (default: `publish_files(output_dir)`): `config.json` with an `auto_map`, the safetensors
    weights (every shard of a sharded index), the processor config, the tokenizer files, the remote code (modules named
    by the `auto_map`s, `modeling_part.py`, and the modules they import), and a `README.md` whose front matter parses.
    """
    folder = Path(output_dir)
    present = set(publish_files(folder) if files is None else files)
    problems: list[str] = []

    config = None
    if "config.json" not in present:
        problems.append("config.json (save the model with model.save_pretrained(output_dir))")
    else:
        config = _json(folder, "config.json", problems)
        auto_map = (config or {}).get("auto_map") or {}
        if config is not None and not {"AutoConfig", "AutoModelForSpeechSeq2Seq"} <= set(auto_map):
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
        hint = " (this looks like a LoRA adapter folder: save with lora_save_mode='merged')" if (
            "adapter_config.json" in present
        ) else ""
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
    for name in processor_files + [n for n in ("tokenizer_config.json",) if n in present]:
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

    missing, seen, queue = [], set(), sorted(modules)
    while queue:
        module = queue.pop(0)
        if module in seen:
            continue
        seen.add(module)
        path = f"{module.replace('.', '/')}.py"
        if path not in present:
            missing.append(path)
            continue
        queue += sorted(get_relative_imports(str(folder / path)))
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
    """Uploads a finished PART run to the Hub model repository `repo_id` in one commit.

    The repository is created if needed (`create_repo(..., exist_ok=True)`). Uploaded: the model (safetensors,
    `config.json` with its `auto_map`, the remote code `.py` files), the processor and tokenizer files, `README.md`
    and the run's JSON summaries; not uploaded: stage folders, checkpoints, optimizer/scheduler/RNG states and logs
    (`PUBLISH_IGNORE_PATTERNS`, plus `ignore_patterns`). Files already in the repository and absent here are kept.

    Args:
        output_dir: the run's folder (`PartTrainingArguments.output_dir`), with `README.md` from `write_model_card`.
        repo_id: `"namespace/name"` of the model repository.
        private: create the repository as private (an existing repository keeps its visibility).
        token: a Hub token (default: the logged-in one).
        commit_message, commit_description: of the commit.
        revision: the branch to commit to (default: main).
        create_pr: open a pull request instead of committing to the branch.
        ignore_patterns: further files to leave out (`fnmatch` patterns on paths relative to `output_dir`).
        api: the `HfApi` to use (e.g. with another `endpoint`).

    Returns:
        The `CommitInfo` of the commit.

    Raises:
        ValueError: `output_dir` lacks files a loadable PART repository needs (the message lists them), or the Hub
            rejects the card's metadata (`ModelCard.validate`, on the `HF_ENDPOINT` Hub).
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
