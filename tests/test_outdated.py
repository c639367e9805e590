"""requirements/outdated.py (`make outdated`): version parsing, range admission, the reasons read out of pip's errors
and the table, offline. Index look-ups and pip's dry runs are injected; the pip texts below are pip's real output."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("outdated", ROOT / "requirements" / "outdated.py")
outdated = importlib.util.module_from_spec(_spec)
sys.modules["outdated"] = outdated  # dataclasses look their module up there
_spec.loader.exec_module(outdated)

# `pip install --dry-run --report ... torch==2.13.0+cpu transformers==5.25.0` here (pip 26.3, version lists cut).
KERNELS_FAILURE = """\
Looking in indexes: https://pypi.org/simple, file:///opt/pypi/simple, file:///opt/pypi-more/simple
WARNING: Location 'file:///opt/pypi/simple/kernels/' is ignored: it is neither a file nor a directory.
ERROR: Ignored the following versions that require a different python version: 1.21.2 Requires-Python >=3.7,<3.11; 2.5.0 Requires-Python >=3.12; 3.7 Requires-Python >=3.12,!=3.14.1
ERROR: Could not find a version that satisfies the requirement kernels<0.20,>=0.19.1 (from transformers) (from versions: 0.1.7, 0.2.0, 0.5.0.dev0, 0.16.2, 0.17.0, 0.17.1, 0.17.2)
ERROR: No matching distribution found for kernels<0.20,>=0.19.1 (from transformers)
"""
# `pip install --dry-run --report ... torch==2.15.0` where pip.conf names a constraints file with torch<=2.14.1.
CONFLICT_FAILURE = """\
Looking in links: /opt/wheels
ERROR: Cannot install torch==2.15.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested torch==2.15.0
    The user requested (constraint) torch<=2.14.1

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    torch

To fix this you could try to:
1. loosen the range of package versions you've specified

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""
# `pip install --dry-run --report -c constraints.txt transformers==5.24.0`, pinning huggingface-hub==1.30.0.
PIN_CONFLICT = """\
Collecting transformers==5.24.0
ERROR: Cannot install transformers==5.24.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    transformers 5.24.0 depends on huggingface-hub<3.0 and >=1.31.0
    The user requested (constraint) huggingface-hub==1.30.0

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    huggingface-hub
"""
# `pip install --dry-run --no-deps numpy==2.5.0` on Python 3.11 (pip 23.2.1, version lists cut).
PYTHON_FAILURE = """\
ERROR: Ignored the following versions that require a different python version: 1.21.6 Requires-Python >=3.7,<3.11; 2.5.0 Requires-Python >=3.12; 2.5.0rc1 Requires-Python >=3.12; 2.5.1 Requires-Python >=3.12
ERROR: Could not find a version that satisfies the requirement numpy==2.5.0 (from versions: 2.3.0rc1, 2.4.5, 2.4.6)
ERROR: No matching distribution found for numpy==2.5.0
"""
# `pip index versions torch` on this machine (the list cut).
TORCH_INDEX = """\
torch (2.15.0)
Available versions: 2.15.0, 2.14.1, 2.14.0, 2.13.0+cpu, 2.13.0, 2.12.1, 2.16.0rc1
"""


def requirement(line: str, where: str = "install"):
    return outdated.DirectRequirement(outdated.Requirement(line), where)


def report(**versions: str) -> str:
    """A pip --report JSON with these installs."""
    return json.dumps({"install": [{"metadata": {"name": name, "version": v}} for name, v in versions.items()]})


def test_setup_py_requirements_are_read_with_their_extras_and_ranges():
    requirements = outdated.read_setup_requirements(ROOT / "setup.py")
    by_name = {req.name: req for req in requirements}
    assert by_name["transformers"].where == "install"
    assert by_name["deepspeed"].where == "deepspeed"
    assert by_name["pytest"].where == "test"
    assert by_name["huggingface-hub"].requirement.name == "huggingface_hub"  # canonical name, original kept
    assert by_name["transformers"].range_text.startswith(">=")  # as setup.py writes it, lower end first
    assert "all" not in {req.where for req in requirements}  # the derived extra is not read twice
    assert len(by_name) == len(requirements)


def test_setup_py_without_literal_lists_is_a_clear_error(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text("from setuptools import setup\nsetup(install_requires=['torch'])\n")
    with pytest.raises(SystemExit, match="INSTALL_REQUIRES"):
        outdated.read_setup_requirements(setup)


def test_lock_is_read_as_exact_pins_and_rejects_ranges():
    lock = outdated.read_lock("# header\nHuggingface_Hub==2.4.0\ntorch==2.13.0  # pinned\n\n")
    assert lock == {"huggingface-hub": "2.4.0", "torch": "2.13.0"}
    with pytest.raises(ValueError, match="make lock"):
        outdated.read_lock("numpy>=2.4\n")


def test_newest_release_skips_prereleases_and_drops_the_local_build():
    versions = outdated.parse_index_versions(TORCH_INDEX)
    assert "2.13.0+cpu" in versions
    assert outdated.newest_release(versions) == "2.15.0"
    assert outdated.newest_release(["2.13.0+cpu", "2.12.1"]) == "2.13.0"
    assert outdated.newest_release(["0.10.0", "0.9.1", "0.10.0.dev0"]) == "0.10.0"  # numeric, not text, order
    with pytest.raises(ValueError, match="Available versions"):
        outdated.parse_index_versions("ERROR: No matching distribution found for nothing-here")


def test_torch_requirement_prefers_the_cpu_build_when_the_index_has_it():
    assert outdated.torch_requirement("2.13.0", ["2.15.0", "2.13.0+cpu", "2.13.0"]) == "torch==2.13.0+cpu"
    assert outdated.torch_requirement("2.13.0", ["2.15.0", "2.13.0"]) == "torch==2.13.0"


def test_missing_dependency_reason_names_who_needs_it_and_the_newest_on_the_index():
    reason = outdated.parse_install_failure(KERNELS_FAILURE)
    assert reason == "transformers needs kernels<0.20,>=0.19.1; the newest kernels on the index is 0.17.2"


def test_conflict_reason_lists_its_causes():
    reason = outdated.parse_install_failure(CONFLICT_FAILURE)
    assert reason == "conflict: The user requested torch==2.15.0; The user requested (constraint) torch<=2.14.1"


def test_conflict_with_a_pin_reads_both_sides():
    reason = outdated.parse_install_failure(PIN_CONFLICT)
    assert reason == (
        "conflict: transformers 5.24.0 depends on huggingface-hub<3.0 and >=1.31.0; "
        "The user requested (constraint) huggingface-hub==1.30.0"
    )


def test_python_version_reason_names_the_requires_python():
    reason = outdated.parse_install_failure(PYTHON_FAILURE)
    assert reason.startswith("numpy==2.5.0 is wanted; the matching releases need another Python")
    assert "2.5.0 Requires-Python >=3.12" in reason and "2.5.1" not in reason


def test_unknown_failure_reason_is_pips_last_error_line():
    assert outdated.parse_install_failure("ERROR: one\nERROR: the last one\n") == "the last one"


def test_configured_cap_names_the_constraint_that_excludes_the_release(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# on disk\ntorch<=2.14.1\ntorchvision<=0.29.1\n")
    files = outdated.parse_pip_config_constraints(
        f"global.cert='/etc/ssl/certs/ca.crt'\nglobal.constraint='{constraints} {tmp_path / 'absent.txt'}'\n"
    )
    assert files == [constraints, tmp_path / "absent.txt"]
    assert outdated.configured_cap("torch", "2.15.0", files) == f"this machine's pip caps torch<=2.14.1 ({constraints})"
    assert outdated.configured_cap("torch", "2.14.1", files) == ""


class FakePip:
    """Index versions and dry-run outcomes by package, recording each dry run it is asked for."""

    def __init__(self, versions: dict[str, list[str]], outcomes: dict[tuple[str, bool], tuple[bool, str]]):
        self.versions, self.outcomes, self.calls = versions, outcomes, []

    def lookup(self, name: str) -> list[str]:
        if name not in self.versions:
            raise RuntimeError("No matching distribution found for " + name)
        return self.versions[name]

    def try_install(self, lines: list[str], with_lock: bool) -> tuple[bool, str]:
        self.calls.append((lines, with_lock))
        return self.outcomes[(lines[1].split("==")[0], with_lock)]


LOCK = {
    "torch": "2.13.0", "transformers": "5.24.0", "accelerate": "1.15.0", "peft": "0.21.2", "huggingface-hub": "2.4.0",
    "asrfront": "0.2.2",
}
REQUIREMENTS = [
    requirement("torch>=2.13,<2.14"),
    requirement("transformers>=5.24,<5.25"),
    requirement("accelerate>=1.15,<2"),
    requirement("peft>=0.21.2,<0.22"),
    requirement("huggingface_hub>=2.4,<3"),
    requirement("asrfront>=0.2.2,<0.3", "asrfront"),
]


def build(pip: FakePip, constraint_files=()):
    rows = outdated.build_rows(REQUIREMENTS, LOCK, "2.13.0", pip.lookup, pip.try_install, constraint_files, jobs=3)
    return {row.name: row for row in rows}, rows


def test_rows_check_only_new_releases_with_the_lock_first_then_without_if_a_pin_conflicts(tmp_path):
    pip = FakePip(
        {
            "torch": ["2.15.0", "2.13.0+cpu", "2.13.0"],
            "transformers": ["5.25.0", "5.24.0"],
            "accelerate": ["1.16.0", "1.15.0"],
            "peft": ["0.22.0", "0.21.2"],
            "huggingface-hub": ["2.4.0"],
        },
        {
            ("transformers", True): (False, KERNELS_FAILURE),
            ("accelerate", True): (True, report(accelerate="1.16.0")),
            ("peft", True): (False, PIN_CONFLICT),
            ("peft", False): (True, report(peft="0.22.0", **{"huggingface_hub": "2.5.0", "torch": "2.13.0+cpu"})),
        },
    )
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    rows, ordered = build(pip, [constraints])
    assert [row.name for row in ordered] == [req.name for req in REQUIREMENTS]  # setup.py's order

    # Every dry run pins the CPU build, asks for the exact release and keeps the other ranges; torch is never resolved.
    checked = sorted((lines[1], with_lock) for lines, with_lock in pip.calls)
    assert checked == [
        ("accelerate==1.16.0", True),
        ("peft==0.22.0", False), ("peft==0.22.0", True),
        ("transformers==5.25.0", True),  # no constraint in pip's error: the lock is not to blame, no second run
    ]
    lines = next(lines for lines, _ in pip.calls if lines[1] == "accelerate==1.16.0")
    assert lines[0] == "torch==2.13.0+cpu"
    assert "transformers<5.25,>=5.24" in lines and "asrfront<0.3,>=0.2.2" in lines
    assert not any(line.startswith(("accelerate>", "torch>")) for line in lines)

    assert rows["transformers"].admitted is False and rows["transformers"].check.installs is False
    assert "kernels<0.20,>=0.19.1" in rows["transformers"].check.reason
    assert rows["accelerate"].admitted is True and rows["accelerate"].check == outdated.InstallCheck(True)
    assert rows["peft"].check.installs and rows["peft"].check.lock_moves == ("huggingface-hub 2.4.0 -> 2.5.0",)
    assert rows["huggingface-hub"].check.reason == "the locked version"
    assert rows["torch"].admitted is False and not rows["torch"].check.installs
    assert "torch<=2.14.1" in rows["torch"].check.reason and outdated.TORCH_NOTE in rows["torch"].notes
    assert rows["asrfront"].newest is None and "asrfront" in rows["asrfront"].lookup_error

    verdict = outdated.drift_lines(ordered)
    assert verdict[-1] == "DRIFT: 3 newest release(s) outside setup.py's ranges, 1 of them installable here"
    for start in (
        "! peft 0.22.0 installs here (the lock moves: huggingface-hub 2.4.0 -> 2.5.0)",
        "- transformers 5.25.0 is outside setup.py's >=5.24,<5.25 and does not install",
        "- accelerate 1.16.0 is newer than the lock",
        "- torch 2.15.0 is out; cap stays",
        "? asrfront: the index look-up failed",
    ):
        assert sum(line.startswith(start) for line in verdict) == 1, (start, verdict)

    table = outdated.format_table(ordered).splitlines()
    assert table[0].split() == ["package", "from", "lock", "newest", "setup.py", "admits", "installs", "here", "note"]
    assert all(line == line.rstrip() for line in table)
    peft = next(line for line in table if line.startswith("peft "))
    assert "0.22.0" in peft and " NO " in peft and "yes, lock moves" in peft
    torch = next(line for line in table if line.startswith("torch "))
    assert ">=2.13,<2.14" in torch and "cap stays" in torch


def test_no_drift_and_torch_not_resolved_without_a_machine_cap():
    versions = {name: [version] for name, version in LOCK.items()}
    pip = FakePip({**versions, "torch": ["2.14.0", "2.13.0"]}, {})
    rows, ordered = build(pip)
    assert pip.calls == []  # every other newest release is the locked one: nothing to resolve
    assert rows["torch"].check is None  # no dry run: it would pull CUDA wheels
    torch = next(line for line in outdated.format_table(ordered).splitlines() if line.startswith("torch "))
    assert "not tried" in torch
    summary = "DRIFT: 1 newest release(s) outside setup.py's ranges, 0 of them installable here"
    assert outdated.drift_lines(ordered)[-1] == summary

    pip.versions["torch"] = ["2.13.0+cpu", "2.13.0"]
    rows, ordered = build(pip)
    assert rows["torch"].check == outdated.InstallCheck(True, "the pinned version")
    assert outdated.drift_lines(ordered) == ["No drift: setup.py admits every newest release."]


def test_a_lock_outside_setup_py_is_flagged():
    row = outdated.Row("numpy", "install", outdated.SpecifierSet(">=2.4,<3"), "2.3.5", ">=2.4,<3", newest="2.4.6")
    assert row.admitted and row.behind_lock
    assert outdated.drift_lines([row])[0] == "! numpy: the lock's 2.3.5 is outside setup.py's >=2.4,<3: run `make lock`"
