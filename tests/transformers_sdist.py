"""transformers' own common test mixins, fetched from the source distribution of the installed transformers.

The mixins (`tests/test_modeling_common.py`, `tests/test_configuration_common.py`, ...) are not part of the
transformers wheel, and this repository does not copy them: `common_tests_package()` downloads the sdist of exactly
the installed version with pip (`pip download --no-deps --no-binary :all: transformers==<version>`), extracts its
`tests/*.py` into a cache folder as the package `hf_common_tests`, and puts that folder on `sys.path`.

The 5.24 sdist ships the top-level `tests/*.py` files only. Three modules they import are not in it; they are
replaced by stubs, so what they would add is not run (stated in `MISSING_MODULES`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "hf_common_tests"
# Modules `test_modeling_common.py` / `test_configuration_common.py` import that the sdist does not contain.
MISSING_MODULES = {
    "exporters/test_export.py": (
        "class ExportTesterMixin:\n"
        '    """Stub: tests/exporters/ is not in the transformers sdist, so its torch.export tests do not run."""\n'
    ),
    "generation/test_utils.py": (
        "class GenerationTesterMixin:\n"
        '    """Stub: tests/generation/ is not in the transformers sdist, so its generate() tests do not run."""\n'
    ),
    "utils/test_configuration_utils.py": (
        "# Stub: tests/utils/ is not in the transformers sdist. ConfigTester reads this only in\n"
        "# check_config_arguments_init, which returns early for composite configs such as PartConfig.\n"
        "config_common_kwargs = {}\n"
    ),
}


def cache_root() -> Path:
    """`$PART_TRANSFORMERS_TESTS_CACHE`, else `~/.cache/part-speech/transformers-tests`."""
    default = Path.home() / ".cache" / "part-speech" / "transformers-tests"
    return Path(os.environ.get("PART_TRANSFORMERS_TESTS_CACHE", default))


def _download_sdist(version: str, folder: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
        f"transformers=={version}", "--dest", str(folder),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"`{' '.join(command)}` did not finish in 600 s") from error
    archives = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        raise RuntimeError(
            f"Could not download the transformers {version} source distribution from the package registry, which "
            "holds transformers' common model tests (ModelTesterMixin). These tests need it: allow pip to reach the "
            "registry, or set PART_TRANSFORMERS_TESTS_CACHE to a folder where it was extracted before.\n"
            f"command: {' '.join(command)}\npip said:\n{result.stderr[-3000:]}"
        )
    return archives[0]


def _extract(archive: Path, target: Path, version: str) -> None:
    prefix = f"transformers-{version}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)]
        top_level = [m for m in members if "/" not in m.name[len(prefix):] and m.name.endswith(".py")]
        if not any(m.name.endswith("/test_modeling_common.py") for m in top_level):
            raise RuntimeError(f"{archive.name} has no tests/test_modeling_common.py; cannot run the common tests.")
        for member in top_level:
            data = tar.extractfile(member).read()
            (target / Path(member.name).name).write_bytes(data)
    (target / "__init__.py").write_text(f'"""tests/ of the transformers {version} sdist."""\n')
    for relative, text in MISSING_MODULES.items():
        path = target / relative
        if path.exists():  # a later sdist may ship it: then the real module is used
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)


def common_tests_package() -> str:
    """Makes `hf_common_tests` (the sdist's `tests/` of the installed transformers) importable; returns its folder.

    Raises `RuntimeError` naming the cause when the sdist cannot be downloaded.
    """
    version = transformers.__version__
    root = cache_root() / version
    package = root / PACKAGE
    if not (package / "test_modeling_common.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            scratch = Path(scratch)
            archive = _download_sdist(version, scratch)
            staging = scratch / PACKAGE
            staging.mkdir()
            _extract(archive, staging, version)
            shutil.rmtree(package, ignore_errors=True)
            staging.rename(package)  # atomic: a half-extracted folder is never used
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return str(package)


__all__ = ["MISSING_MODULES", "PACKAGE", "cache_root", "common_tests_package"]
