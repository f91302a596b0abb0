"""The README's commands exist: every `mer` subcommand and option, every DVC stage, every module.

The README is where a user starts; a command it shows that the code does not have (a stage name
from an older dvc.yaml, an option that was renamed) is a defect like any other.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from stages.cli import cli
from tests.conftest import PROJECT

README = PROJECT / "README.md"


def _shell_lines() -> list[str]:
    """Commands of the README's bash blocks and of its inline `mer ...` / `dvc ...` code spans."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines()]
    lines += re.findall(r"`((?:mer|dvc repro|dvc pull|python -m) [^`]+)`", text)
    commands = []
    for line in lines:
        commands += [part.strip() for part in re.split(r"&&|;", line) if part.strip() and not part.startswith("#")]
    return commands


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _stage_names() -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def _command(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command that `mer WORDS...` runs, and the words after its name."""
    command: click.Command = cli
    rest = words[1:]
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if rest[0].isupper():  # a placeholder: `mer STAGE --help`
            return command, []
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"`mer {' '.join(words[1:])}`: no subcommand {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


def test_the_readme_shows_commands():
    commands = _shell_lines()
    assert any(c.startswith("mer ") for c in commands) and any(c.startswith("dvc repro") for c in commands)


def test_every_mer_command_and_option_in_the_readme_exists():
    problems = []
    for line in (c for c in _shell_lines() if c.startswith("mer ")):
        words = _words(line)
        try:
            command, rest = _command(words)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        for word in rest:
            flag = word.split("=")[0]
            if flag.startswith("--") and flag not in options and flag != "--help":
                problems.append(f"`{line}`: `mer {command.name}` has no option {flag}")
    assert not problems, "\n".join(problems)


def test_every_dvc_stage_the_readme_names_exists():
    stages = _stage_names()
    problems = []
    for line in _shell_lines():
        words = _words(line)
        if words[:2] not in (["dvc", "repro"], ["dvc", "pull"], ["dvc", "push"], ["dvc", "status"]):
            continue
        for word in words[2:]:
            if word.startswith("-") or "=" in word:
                continue
            if word not in stages:
                problems.append(f"`{line}`: no DVC stage {word!r} (stages: {', '.join(sorted(stages))})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", ["module", "script"])
def test_every_python_module_and_script_in_the_readme_exists(kind):
    problems = []
    for line in _shell_lines():
        words = _words(line)
        if words[:1] != ["python"] or len(words) < 2:
            continue
        if kind == "module" and words[1] == "-m":
            module = words[2]
            if module.split(".")[0] in ("pytest", "venv", "dvc", "pip"):
                continue
            path = PROJECT.joinpath(*module.split("."))
            if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                problems.append(f"`{line}`: no module {module}")
        elif kind == "script" and words[1].endswith(".py") and not (PROJECT / words[1]).is_file():
            problems.append(f"`{line}`: no script {words[1]}")
    assert not problems, "\n".join(problems)


def test_paths_the_readme_names_in_the_project_exist():
    """Files of the project the README and docs/ point at (code, docs), not outputs a run makes."""
    text = "\n".join(path.read_text() for path in [README, *sorted((PROJECT / "docs").glob("*.md"))])
    named = set(re.findall(r"`((?:pipeline|stages|tests|benchmarks|docs)/[\w/.-]+\.(?:py|md|jpg))`", text))
    named |= set(re.findall(r"\]\(((?:docs)/[\w/.-]+)\)", text))
    missing = sorted(p for p in named if not (PROJECT / Path(p.split("::")[0])).exists())
    assert not missing, f"README names files that do not exist: {missing}"
