"""Reading a stage's section of params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import MerError


def _read(params_file: str | Path) -> dict[str, Any]:
    path = Path(params_file)
    if not path.is_file():
        raise MerError(f"params file not found: {path} (pass --params FILE or run from the project folder)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MerError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MerError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _section(params_file: str | Path, data: dict[str, Any], section: str) -> dict[str, Any]:
    value = data[section]
    if not isinstance(value, dict):
        raise MerError(f"{params_file}: section '{section}' must be a mapping, got {type(value).__name__}")
    return value


def load_section(params_file: str | Path, section: str) -> dict[str, Any]:
    """Return one top-level section of a params file as a dict.

    A missing file or section is an error that names both, since every stage's defaults live in
    params.yaml and running with silent built-in defaults would hide a typo.
    """
    data = _read(params_file)
    if section not in data:
        raise MerError(f"{params_file} has no '{section}' section; add one (see the project's params.yaml)")
    return _section(params_file, data, section)


def optional_section(params_file: str | Path, section: str) -> dict[str, Any]:
    """Like `load_section`, for sections that may be left out: a missing one is empty."""
    data = _read(params_file)
    return _section(params_file, data, section) if section in data else {}
