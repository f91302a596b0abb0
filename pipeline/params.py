"""Reading a stage's section of params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import MerError


def load_section(params_file: str | Path, section: str) -> dict[str, Any]:
    """Return one top-level section of a params file as a dict.

    A missing file or section is an error that names both, since every stage's defaults live in
    params.yaml and running with silent built-in defaults would hide a typo.
    """
    path = Path(params_file)
    if not path.is_file():
        raise MerError(f"params file not found: {path} (pass --params FILE or run from the project folder)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MerError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or section not in data:
        raise MerError(f"{path} has no '{section}' section; add one (see the project's params.yaml)")
    value = data[section]
    if not isinstance(value, dict):
        raise MerError(f"{path}: section '{section}' must be a mapping, got {type(value).__name__}")
    return value
