"""The README works as pasted and the documentation holds together.

- The README's Python blocks run, in order, in a fresh process in an empty folder (blocks marked as not run, which
  download from the Hub or need the reader's data, are only compiled).
- Every command of the README's ```bash blocks names a make target of the Makefile, or a script or file that exists,
  with flags that the script (`--help`), the launcher or pip accepts.
- Every relative link of README.md and docs/*.md points to a file that exists, and a `#heading` link to a heading
  that exists; the README stays at most 300 lines.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- not run by tests/test_readme.py"
MAX_README_LINES = 300
# docs pages written on other branches of the same change; a link to one may point ahead of its merge.
PAGES_WRITTEN_ELSEWHERE = {"docs/long-form.md", "docs/batching.md", "docs/scaling.md", "docs/maintaining.md"}
LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run"]}  # launcher -> how to ask python for its --help
PYTHON_MODULE_LAUNCHERS = {"torch.distributed.run"}
HELP_ENV = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")


def readme_text() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def fenced_blocks(text: str, language: str) -> list[tuple[str, bool]]:
    """The ```<language> blocks of a markdown text, each with whether it is marked as not run."""
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()
        blocks.append((match.group(1), bool(before) and before[-1].startswith(SKIP_MARKER)))
    return blocks


def quick_start_blocks(readme: str) -> list[str]:
    """The ```python blocks of the "## Quick start" section (down to the next "## " heading), without the blocks
    marked as not run (they download from the Hub)."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block for block, skipped in fenced_blocks(section, "python") if not skipped]


def test_quick_start_blocks_are_found():
    blocks = quick_start_blocks(readme_text())
    assert len(blocks) >= 2
    assert any("apply_transcription_request" in block for block in blocks)
    assert any("output_labels=True" in block for block in blocks)


def test_every_python_block_compiles():
    blocks = fenced_blocks(readme_text(), "python")
    assert any(skipped for _, skipped in blocks), "the blocks that download from the Hub are expected to be marked"
    for i, (block, _) in enumerate(blocks):
        compile(block, f"README.md python block {i}", "exec")


def test_readme_python_blocks_run_as_pasted(tmp_path):
    """Every unmarked ```python block of the README (the quick start first, then the schedule example), in order."""
    blocks = [block for block, skipped in fenced_blocks(readme_text(), "python") if not skipped]
    assert set(quick_start_blocks(readme_text())) < set(blocks)
    (tmp_path / "readme_blocks.py").write_text("\n".join(blocks))
    result = subprocess.run([sys.executable, "readme_blocks.py"], cwd=tmp_path, env=HELP_ENV, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "my-part" / "config.json").exists()
    assert (tmp_path / "my_schedule.yaml").exists()


# ----------------------------------------------------------------------------------------------------- commands
def shell_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks, with backslash continuations joined (comments are kept: shlex
    drops them)."""
    commands = []
    for block, _ in fenced_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


@functools.cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)) - {".PHONY"}


@functools.cache
def setup_extras() -> frozenset[str]:
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    block = text.split("EXTRAS = {", 1)[1].split("\n}", 1)[0]
    return frozenset(re.findall(r'^\s*"([\w-]+)":', block, flags=re.M) + re.findall(r'EXTRAS\["([\w-]+)"\]', text))


@functools.cache
def help_text(*python_args: str) -> str:
    """`python <python_args> --help`, run from the repository root; a non-zero exit fails the check."""
    result = subprocess.run([sys.executable, *python_args, "--help"], cwd=REPO, env=HELP_ENV, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"`python {' '.join(python_args)} --help` failed:\n{result.stderr[-2000:]}")
    return result.stdout


def unknown_flags(flags: list[str], help_output: str) -> list[str]:
    """The flags (`--name` or `--name=value`, `-x`) that a `--help` output does not list."""
    names = [flag.split("=", 1)[0] for flag in flags]
    return [name for name in names if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_output)]


def is_flag(token: str) -> bool:
    """`--name`, `--name=value` or `-x`; not a negative number (a flag's value)."""
    return re.match(r"--?[A-Za-z]", token) is not None


def split_at_script(tokens: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(launcher arguments, the first `.py` path, the script's arguments)."""
    for i, token in enumerate(tokens):
        if token.endswith(".py"):
            return tokens[:i], token, tokens[i + 1 :]
    return tokens, None, []


def check_script(script: str, arguments: list[str]) -> list[str]:
    if not (REPO / script).is_file():
        return [f"{script} does not exist"]
    flags = [a for a in arguments if is_flag(a)]
    if not flags:
        return []
    missing = unknown_flags(flags, help_text(script))
    return [f"{script} does not accept {missing} (see `python {script} --help`)"] if missing else []


def check_launcher(name: str, python_args: list[str], tokens: list[str]) -> list[str]:
    launcher_args, script, script_args = split_at_script(tokens)
    if script is None:
        return [f"{name}: no script (a .py path) to launch"]
    missing = unknown_flags([a for a in launcher_args if is_flag(a)], help_text(*python_args))
    problems = [f"{name} does not accept {missing}"] if missing else []
    return problems + check_script(script, script_args)


def check_pip(tokens: list[str]) -> list[str]:
    if not tokens or tokens[0] != "install":
        return [f"pip {' '.join(tokens[:1])}: only `pip install` is checked"]
    problems = []
    missing = unknown_flags([t for t in tokens[1:] if is_flag(t)], help_text("-m", "pip", "install"))
    if missing:
        problems.append(f"pip install does not accept {missing}")
    for option, value in zip(tokens, tokens[1:]):
        if option in ("-c", "-r", "--constraint", "--requirement") and not (REPO / value).is_file():
            problems.append(f"pip install {option} {value}: the file does not exist")
        if option in ("-e", "--editable"):
            path, _, extras = value.partition("[")
            if not (REPO / path).is_dir():
                problems.append(f"pip install -e {value}: {path} is not a folder of the repository")
            unknown = sorted(set(filter(None, extras.rstrip("]").split(","))) - setup_extras())
            if unknown:
                problems.append(f"pip install -e {value}: setup.py has no extra {unknown}")
    return problems


def check_command(command: str) -> list[str]:
    """What is wrong with one command line, as a list of problems (empty: it works as pasted)."""
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # environment assignments
        tokens = tokens[1:]
    placeholders = [t for t in tokens if re.fullmatch(r"<[^>]+>", t)]
    if placeholders:
        return [f"`{command}`: placeholders {placeholders} cannot be pasted"]
    if not tokens:
        return [f"`{command}`: no command"]
    program, args = tokens[0], tokens[1:]
    if program == "make":
        unknown = [t for t in args if not t.startswith("-") and "=" not in t and t not in make_targets()]
        return [f"`{command}`: the Makefile has no target {unknown}"] if unknown or not args else []
    if program == "pip":
        return [f"`{command}`: {p}" for p in check_pip(args)]
    if program in LAUNCHERS:
        return [f"`{command}`: {p}" for p in check_launcher(program, LAUNCHERS[program], args)]
    if program in ("python", "python3"):
        if args[:1] == ["-m"] and len(args) > 1:
            if args[1] == "pip":
                return [f"`{command}`: {p}" for p in check_pip(args[2:])]
            if args[1] in PYTHON_MODULE_LAUNCHERS:
                return [f"`{command}`: {p}" for p in check_launcher(args[1], ["-m", args[1]], args[2:])]
            return [f"`{command}`: module {args[1]} is not one the README check knows"]
        if args and args[0].endswith(".py"):
            return [f"`{command}`: {p}" for p in check_script(args[0], args[1:])]
    return [f"`{command}`: {program} is not a command the README check knows (make, pip, python, torchrun)"]


def test_readme_has_commands_to_check():
    commands = shell_commands(readme_text())
    assert any(c.startswith("make test") for c in commands) and any(c.startswith("make demo") for c in commands)
    assert any("examples/run_asr.py" in c for c in commands)


def test_every_readme_command_works_as_pasted():
    text = readme_text()
    problems = [p for command in shell_commands(text) for p in check_command(command)]
    # `make <target>` named in the prose too
    problems += [f"`make {t}` in the text: no such target" for t in re.findall(r"`make ([\w-]+)`", text)
                 if t not in make_targets()]
    assert not problems, "\n".join(problems)


def test_command_check_rejects_what_would_not_work():
    assert check_command("make test") == []
    assert check_command("make no-such-target")
    assert check_command("python examples/no_such_script.py --flag 1")
    assert check_command("python examples/run_asr.py --no_such_flag 1")
    assert check_command("python examples/run_asr.py <args>")
    assert check_command("pip install -e '.[no-such-extra]'")
    assert check_command("pip install -c requirements/no-such-lock.txt -e .")
    assert check_command("torchrun --no-such-launcher-flag 2 examples/run_asr.py")
    assert check_command("curl https://example.com")
    assert check_command("python examples/run_asr.py --audio_encoder x --llm y --learning_rate -1") == []


# -------------------------------------------------------------------------------------------------------- links
def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text (outside code blocks)."""
    anchors: set[str] = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, flags=re.M):
        base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = base, 0
        while anchor in anchors:
            n += 1
            anchor = f"{base}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """The relative links of a markdown file that point to no file, or to no heading of the file."""
    text = path.read_text(encoding="utf-8") if text is None else text
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    problems = []
    for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        name = f"{path.relative_to(REPO)}: ({target})"
        if not file_part:
            if anchor not in heading_anchors(text):
                problems.append(f"{name}: no heading of this page has the anchor #{anchor}")
            continue
        linked = (path.parent / file_part).resolve()
        try:
            repo_path = linked.relative_to(REPO).as_posix()
        except ValueError:
            problems.append(f"{name} points outside the repository")
            continue
        if not linked.exists():
            if repo_path not in PAGES_WRITTEN_ELSEWHERE:
                problems.append(f"{name}: {repo_path} does not exist")
            continue
        if anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{name}: {repo_path} has no heading with the anchor #{anchor}")
    return problems


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_pages_exist_and_are_linked_from_the_readme():
    pages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
    assert pages, "docs/ holds the documentation beyond the README"
    text = readme_text()
    assert [p for p in pages if f"]({p}" not in text] == [], "every docs page is linked from the README"


def test_every_relative_link_points_to_a_file_and_heading():
    problems = [p for path in markdown_files() for p in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_link_check_rejects_missing_files_and_headings():
    page = REPO / "docs" / "page.md"
    assert broken_links(page, "[a](demo.md) [b](../README.md#quick-start) [c](#top)\n# Top\n") == []
    assert broken_links(page, "[a](no-such-page.md)")
    assert broken_links(page, "[a](../README.md#no-such-heading)")
    assert broken_links(page, "[a](#no-such-heading)\n# Top\n")
    assert broken_links(page, "[a](scaling.md)") == []  # written on another branch, allowed by name
    assert broken_links(page, "`[not a link](nowhere.md)`") == []


@pytest.mark.parametrize("heading, anchor", [("## Demo: `make demo`", "demo-make-demo"),
                                             ("## Many GPUs and ZeRO-3", "many-gpus-and-zero-3"),
                                             ("### The processor API", "the-processor-api")])
def test_heading_anchors_follow_github(heading, anchor):
    assert anchor in heading_anchors(heading + "\n")


def test_readme_is_short():
    lines = len(readme_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move details to docs/ (at most {MAX_README_LINES})"
