"""Drift report (`make outdated`): for each direct dependency in setup.py, the version in requirements/lock.txt, the
newest release on the package index, whether setup.py's range admits it, and whether it installs here.

"Installs here" is pip's own resolver in a dry run (`pip install --dry-run --ignore-installed --report`): the new
release together with the pinned torch build and every other direct requirement, first within the lock's constraints,
then, if a constraint took part in the failure, with the lock left out (the release installs, but the lock must move). When it does not install,
the reason is read out of pip's error. Nothing is installed or changed. It always exits 0: it reports, and flags drift
in its last lines. docs/maintaining.md says how to act on it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip always carries packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
# Why torch's cap stays whatever the index holds (the Makefile installs the CPU build first and pins it).
TORCH_NOTE = (
    "cap stays: the project pins the CPU build (Makefile TORCH_VERSION); a newer torch from the index is a CUDA "
    "build of several GB"
)


@dataclass(frozen=True)
class DirectRequirement:
    """One requirement line of setup.py: `where` is "install" or the name of its extra."""

    requirement: Requirement
    where: str

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def range_text(self) -> str:
        """The version range as setup.py writes it (packaging's str() reorders it)."""
        return ",".join(str(spec) for spec in sorted(self.requirement.specifier, key=_lower_bound_first))


def _lower_bound_first(spec) -> tuple[int, str]:
    return (0 if spec.operator.startswith(">") or spec.operator in ("==", "~=") else 1, str(spec))


@dataclass(frozen=True)
class InstallCheck:
    """What a dry run of a release says: installs (with the lock or only after it moves), or why not."""

    installs: bool
    reason: str = ""
    lock_moves: tuple[str, ...] = ()  # "name old -> new" for each locked package the release needs changed


@dataclass
class Row:
    """One line of the drift table."""

    name: str
    where: str
    specifier: SpecifierSet
    locked: str | None
    range_text: str = ""
    newest: str | None = None
    lookup_error: str = ""
    check: InstallCheck | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def admitted(self) -> bool | None:
        """Whether setup.py's range admits the newest release (None when the lookup failed)."""
        return None if self.newest is None else self.specifier.contains(self.newest, prereleases=True)

    @property
    def behind_lock(self) -> bool:
        return self.newest is not None and self.locked is not None and Version(self.newest) > Version(self.locked)


def read_setup_requirements(setup_py: Path) -> list[DirectRequirement]:
    """INSTALL_REQUIRES and EXTRAS (except the derived "all") of setup.py, read without running it."""
    values: dict[str, object] = {}
    for node in ast.parse(setup_py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("INSTALL_REQUIRES", "EXTRAS"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    if set(values) != {"INSTALL_REQUIRES", "EXTRAS"}:
        raise SystemExit(f"{setup_py}: expected literal INSTALL_REQUIRES = [...] and EXTRAS = {{...}} assignments")
    requirements = [DirectRequirement(Requirement(line), "install") for line in values["INSTALL_REQUIRES"]]
    for extra, lines in values["EXTRAS"].items():
        requirements += [DirectRequirement(Requirement(line), extra) for line in lines]
    return requirements


def read_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of a lock file's `name==version` lines."""
    versions = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            if len(pins) != 1:
                raise ValueError(f"lock line {line!r} is not an exact `name==version` pin; rewrite it with `make lock`")
            versions[canonicalize_name(requirement.name)] = pins[0]
    return versions


def parse_index_versions(output: str) -> list[str]:
    """The release versions `pip index versions NAME` lists (local builds such as 2.13.0+cpu included)."""
    match = re.search(r"^Available versions:\s*(.+)$", output, re.MULTILINE)
    if not match:
        raise ValueError(f"no 'Available versions:' line in pip's output: {output.strip()[-300:]!r}")
    return [version.strip() for version in match.group(1).split(",") if version.strip()]


def newest_release(versions: Iterable[str]) -> str:
    """The newest final release, a local build label dropped (2.13.0+cpu counts as 2.13.0)."""
    parsed = []
    for version in versions:
        try:
            parsed.append(Version(version))
        except InvalidVersion:
            continue
    finals = [version for version in parsed if not version.is_prerelease and not version.is_devrelease]
    if not finals:
        raise ValueError("the index lists no final release")
    return max(finals).public


def torch_requirement(torch_version: str, torch_versions: Iterable[str]) -> str:
    """`torch==X+cpu` when the index has that CPU build (as `pip install torch==X` would pick), else `torch==X`.

    Pinning the local build keeps pip's resolver from backtracking into the CUDA wheel of the same version, a download
    of half a gigabyte, whenever a dry run meets a conflict.
    """
    cpu = f"{torch_version}+cpu"
    return f"torch=={cpu}" if cpu in set(torch_versions) else f"torch=={torch_version}"


def parse_install_failure(output: str) -> str:
    """The reason a pip dry run failed, in one line, read out of pip's output."""
    lines = output.splitlines()
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = []
        for line in lines[start:]:
            if not line.strip():
                break
            causes.append(line.strip())
        return "conflict: " + "; ".join(causes)
    match = re.search(
        r"Could not find a version that satisfies the requirement (\S+)"
        r"(?: \(from ([^)]+)\))? \(from versions: ([^)]*)\)",
        output,
    )
    if match:
        wanted, parent, listed = match.groups()
        requirement = Requirement(wanted)
        versions = [version.strip() for version in listed.split(",") if version.strip() and version.strip() != "none"]
        needs = f"{parent} needs {wanted}" if parent else f"{wanted} is wanted"
        python = _python_mismatch(output, requirement)
        if python:
            return f"{needs}; the matching releases need another Python ({python})"
        if not versions:
            return f"{needs}; the index has no release of {requirement.name}"
        try:
            newest = newest_release(versions)
        except ValueError:
            newest = versions[-1]
        return f"{needs}; the newest {requirement.name} on the index is {newest}"
    errors = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR:")]
    return errors[-1] if errors else (output.strip().splitlines() or ["pip failed without a message"])[-1]


def _python_mismatch(output: str, requirement: Requirement) -> str:
    """`X Requires-Python S` of the releases pip skipped for their Python version that would have matched."""
    match = re.search(
        r"Ignored the following versions that require a different python version: (.+)$", output, re.MULTILINE
    )
    if not match:
        return ""
    skipped = []
    for item in match.group(1).split(";"):
        parts = item.strip().split(" Requires-Python ")
        if len(parts) == 2 and requirement.specifier.contains(parts[0], prereleases=True):
            skipped.append(f"{parts[0]} Requires-Python {parts[1]}")
    return ", ".join(skipped)


def lock_changes(installs: dict[str, str], lock: dict[str, str], skip: str) -> tuple[str, ...]:
    """Locked packages (other than `skip`) whose version a resolution changed, as "name old -> new"."""
    changes = []
    for name, version in sorted(installs.items()):
        if name != skip and name in lock and Version(version).public != Version(lock[name]).public:
            changes.append(f"{name} {lock[name]} -> {Version(version).public}")
    return tuple(changes)


def configured_cap(name: str, newest: str, constraint_files: Iterable[Path]) -> str:
    """The line of a pip-configured constraints file (pip.conf's `constraint`) that excludes `newest`, or ""."""
    for path in constraint_files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                requirement = Requirement(line)
            except ValueError:
                continue
            excludes = not requirement.specifier.contains(newest, prereleases=True)
            if canonicalize_name(requirement.name) == name and excludes:
                return f"this machine's pip caps {line} ({path})"
    return ""


def build_rows(
    requirements: list[DirectRequirement],
    lock: dict[str, str],
    torch_version: str,
    lookup_versions: Callable[[str], list[str]],
    try_install: Callable[[list[str], bool], tuple[bool, str]],
    constraint_files: Iterable[Path] = (),
    jobs: int = 8,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Row]:
    """The drift table: index look-ups and install checks run in parallel through the injected callables.

    `lookup_versions(name)` lists the index's versions of a package; `try_install(requirement_lines, with_lock)` runs a
    dry run of those lines (with the lock's constraints, less the packages named in the lines, when `with_lock`) and
    returns (ok, pip's JSON report when ok else pip's output).
    """
    rows = [
        Row(req.name, req.where, req.requirement.specifier, lock.get(req.name), req.range_text) for req in requirements
    ]
    by_name = {row.name: row for row in rows}
    constraint_files = list(constraint_files)

    def lookup(name: str) -> tuple[str, list[str] | Exception]:
        try:
            return name, lookup_versions(name)
        except Exception as error:  # noqa: BLE001 - a failed look-up is reported in its row
            return name, error

    torch_versions: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        names = list(dict.fromkeys(row.name for row in rows)) + ([] if "torch" in by_name else ["torch"])
        for done, future in enumerate(as_completed([pool.submit(lookup, name) for name in names]), 1):
            name, result = future.result()
            progress(f"index look-ups {done}/{len(names)}")
            if name == "torch" and not isinstance(result, Exception):
                torch_versions = result
            if name not in by_name:
                continue
            if isinstance(result, Exception):
                message = str(result).strip()
                by_name[name].lookup_error = message.splitlines()[-1] if message else repr(result)
                continue
            try:
                by_name[name].newest = newest_release(result)
            except ValueError as error:
                by_name[name].lookup_error = str(error)

    torch_pin = torch_requirement(torch_version, torch_versions)
    others = {req.name: str(req.requirement) for req in requirements}
    to_check = []
    for row in rows:
        if row.newest is None:
            continue
        if row.name == "torch":
            if Version(row.newest) == Version(torch_version):
                row.check = InstallCheck(True, "the pinned version")
            else:
                cap = configured_cap("torch", row.newest, constraint_files)
                row.check = InstallCheck(False, cap) if cap else None  # never resolved: it would pull CUDA wheels
            row.notes.append(TORCH_NOTE)
        elif row.locked is not None and Version(row.newest) == Version(row.locked):
            row.check = InstallCheck(True, "the locked version")
        else:
            to_check.append(row)

    def check(row: Row) -> InstallCheck:
        rest = [line for name, line in others.items() if name not in (row.name, "torch")]
        lines = [torch_pin, f"{row.name}=={row.newest}", *rest]
        ok, output = try_install(lines, True)
        if ok:
            return InstallCheck(True)
        if "(constraint)" not in output:  # no pin took part in the failure: without the lock it fails the same way
            return InstallCheck(False, parse_install_failure(output))
        ok, output = try_install(lines, False)
        if not ok:
            return InstallCheck(False, parse_install_failure(output))
        installs = {
            canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(output)["install"]
        }
        return InstallCheck(True, lock_moves=lock_changes(installs, lock, skip=row.name))

    if to_check:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(check, row): row for row in to_check}
            for done, future in enumerate(as_completed(futures), 1):
                row = futures[future]
                progress(f"install checks {done}/{len(futures)} ({row.name} {row.newest})")
                try:
                    row.check = future.result()
                except Exception as error:  # noqa: BLE001 - reported in its row
                    row.check = InstallCheck(False, f"check failed: {error}")
    return rows


def drift_lines(rows: list[Row]) -> list[str]:
    """The verdict under the table: one line per drifted package, then a summary line."""
    lines = []
    outside = installable = 0
    for row in rows:
        if row.locked is not None and not row.specifier.contains(row.locked, prereleases=True):
            lines.append(
                f"! {row.name}: the lock's {row.locked} is outside setup.py's {row.range_text}: run `make lock`"
            )
        if row.lookup_error:
            lines.append(f"? {row.name}: the index look-up failed ({row.lookup_error})")
        elif row.admitted is False:
            outside += 1
            if row.name == "torch":
                lines.append(f"- torch {row.newest} is out; {TORCH_NOTE}")
            elif row.check is not None and row.check.installs:
                installable += 1
                moves = f" (the lock moves: {', '.join(row.check.lock_moves)})" if row.check.lock_moves else ""
                lines.append(
                    f"! {row.name} {row.newest} installs here{moves} but setup.py caps it at {row.range_text}: "
                    "try it, fix what breaks, raise the cap (docs/maintaining.md)"
                )
            else:
                reason = row.check.reason if row.check else "not checked"
                lines.append(
                    f"- {row.name} {row.newest} is outside setup.py's {row.range_text} "
                    f"and does not install here: {reason}"
                )
        elif row.behind_lock:
            lines.append(
                f"- {row.name} {row.newest} is newer than the lock ({row.locked}) and admitted: "
                "`make test-latest` runs on it"
            )
    if outside:
        lines.append(
            f"DRIFT: {outside} newest release(s) outside setup.py's ranges, {installable} of them installable here"
        )
    else:
        lines.append("No drift: setup.py admits every newest release.")
    return lines


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""

    def yes_no(value: bool | None) -> str:
        return "?" if value is None else ("yes" if value else "NO")

    table = [("package", "from", "lock", "newest", "setup.py", "admits", "installs here", "note")]
    for row in rows:
        if row.check is None:
            installs = "not tried" if row.newest else "?"
        elif row.check.installs:
            installs = "yes, lock moves" if row.check.lock_moves else "yes"
        else:
            installs = "NO"
        notes = list(row.notes)
        if row.lookup_error:
            notes.insert(0, f"look-up failed: {row.lookup_error}")
        if row.check is not None and not row.check.installs and row.check.reason:
            notes.insert(0, row.check.reason)
        if row.check is not None and row.check.lock_moves:
            notes.insert(0, "lock moves: " + ", ".join(row.check.lock_moves))
        table.append((
            row.name, row.where, row.locked or "-", row.newest or "?", row.range_text or str(row.specifier),
            yes_no(row.admitted), installs, "; ".join(notes),
        ))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1]).rstrip()
        for line in table
    )


# The network side: pip itself, as a subprocess of this interpreter.

def _pip(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True)


def pip_lookup_versions(name: str) -> list[str]:
    """The versions `pip index versions` lists for `name` on pip's configured indexes."""
    result = _pip("index", "versions", name)
    if result.returncode != 0:
        raise RuntimeError(parse_install_failure(result.stdout + result.stderr))
    return parse_index_versions(result.stdout)


def pip_try_install(lock_path: Path) -> Callable[[list[str], bool], tuple[bool, str]]:
    """A `try_install` for build_rows: `pip install --dry-run --ignore-installed --report` of the lines."""
    lock = read_lock(lock_path.read_text(encoding="utf-8"))

    def try_install(lines: list[str], with_lock: bool) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.json"
            arguments = ["install", "--dry-run", "--ignore-installed", "--report", str(report), *lines]
            if with_lock:
                named = {canonicalize_name(Requirement(line).name) for line in lines}
                constraints = Path(folder) / "constraints.txt"
                pins = "".join(f"{name}=={version}\n" for name, version in lock.items() if name not in named)
                constraints.write_text(pins, encoding="utf-8")
                arguments += ["-c", str(constraints)]
            result = _pip(*arguments)
            if result.returncode != 0:
                return False, result.stdout + result.stderr
            return True, report.read_text(encoding="utf-8")

    return try_install


def parse_pip_config_constraints(output: str) -> list[Path]:
    """The constraints files named in `pip config list` output (keys ending in `.constraint`, space-separated)."""
    files = []
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".constraint"):
            files += [Path(item) for item in value.strip().strip("'\"").split()]
    return files


def pip_constraint_files() -> list[Path]:
    """The constraints files pip's configuration applies to every install."""
    return parse_pip_config_constraints(_pip("config", "list").stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", required=True, help="The torch version the project pins (the Makefile's).")
    parser.add_argument("--setup", default=str(ROOT / "setup.py"))
    parser.add_argument("--lock", default=str(ROOT / "requirements" / "lock.txt"))
    parser.add_argument("--jobs", type=int, default=8, help="Parallel pip look-ups.")
    args = parser.parse_args()
    lock_path = Path(args.lock)
    if not lock_path.is_file():
        raise SystemExit(f"--lock {lock_path}: no such file; run `make lock` first")

    def progress(message: str) -> None:
        print(f"\r{message}\033[K", end="", file=sys.stderr, flush=True)

    print(f"Drift report: pip's index ({sys.executable} -m pip) against setup.py and {lock_path}", flush=True)
    rows = build_rows(
        read_setup_requirements(Path(args.setup)),
        read_lock(lock_path.read_text(encoding="utf-8")),
        args.torch,
        pip_lookup_versions,
        pip_try_install(lock_path),
        pip_constraint_files(),
        jobs=args.jobs,
        progress=progress,
    )
    print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(format_table(rows))
    print()
    print("\n".join(drift_lines(rows)))


if __name__ == "__main__":
    main()
