"""dvc.yaml lists, for every stage, exactly the code its command runs.

The code deps of a stage (entries under `pipeline/` or `stages/`, files or whole folders) must
cover the import closure of the stage's command module, computed from the source with `ast`
(imports inside functions included), and nothing else: a module the stage does not import would
rerun it for nothing, a missing one would let a code change go unnoticed. Run
`python -m tests.test_dvc_deps` to print the code deps each stage should list.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

from tests.conftest import PROJECT

CODE_ROOTS = ("pipeline", "stages")


def _has_code(path: Path) -> bool:
    """False for a package __init__ that holds only its docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def _module_file(name: str) -> Path | None:
    path = PROJECT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the project modules `path` imports (a `from X import Y` may name a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        if name.split(".")[0] not in CODE_ROOTS:
            continue
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # parent packages run too
    return {name for name in found if _module_file(name) is not None}


def import_closure(module: str) -> set[Path]:
    """Project files executed when `module` is imported (docstring-only __init__ files left out)."""
    seen: set[str] = set()
    todo = [module, "stages.cli"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported_modules(_module_file(name)) - seen)
    files = {_module_file(name).relative_to(PROJECT) for name in seen}
    return {f for f in files if f.name != "__init__.py" or _has_code(PROJECT / f)}


def _stage_module(cmd: str) -> str:
    sys.path.insert(0, str(PROJECT))
    from stages.cli import _COMMANDS

    command = re.match(r"\s*mer\s+([\w-]+)", cmd).group(1)
    return _COMMANDS[command].split(":")[0]


def _covered(deps: list[str]) -> set[Path]:
    covered = set()
    for dep in deps:
        path = PROJECT / dep
        if path.is_dir():
            covered.update(p.relative_to(PROJECT) for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py":
            covered.add(Path(dep))
    return {f for f in covered if f.name != "__init__.py" or _has_code(PROJECT / f)}


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def _definition(stage: dict) -> dict:
    return stage.get("do", stage)


def test_every_stage_lists_exactly_the_code_it_imports():
    problems = []
    for name, stage in stages().items():
        definition = _definition(stage)
        code_deps = [d for d in definition.get("deps", []) if d.split("/")[0] in CODE_ROOTS]
        closure = import_closure(_stage_module(definition["cmd"]))
        covered = _covered(code_deps)
        if missing := sorted(map(str, closure - covered)):
            problems.append(f"{name}: imports but does not list {missing}")
        if extra := sorted(map(str, covered - closure)):
            problems.append(f"{name}: lists but does not import {extra}")
        for dep in code_deps:
            if not (PROJECT / dep).exists():
                problems.append(f"{name}: lists {dep}, which does not exist")
    assert not problems, "dvc.yaml deps and the code drift apart:\n" + "\n".join(problems)


def test_the_closure_follows_imports_inside_functions(tmp_path):
    # demo_data detects faces with dlib only inside a function: that module must still count.
    closure = import_closure("stages.demo_data")
    assert Path("pipeline/align/landmarks.py") in closure
    assert Path("stages/align.py") not in closure


if __name__ == "__main__":
    for name, stage in stages().items():
        print(f"{name}:")
        for path in sorted(map(str, import_closure(_stage_module(_definition(stage)["cmd"])))):
            print(f"  - {path}")
