"""Settings: every section of params.yaml, and every command-line option, validated by one model.

Each section has one pydantic model below (`SECTIONS`): its keys, their defaults, types and
ranges. Validation is strict: an unknown key is an error with a did-you-mean, `"false"` is not a
boolean, 1.9 is not a count (an int is fine where a float is expected), a value out of range or
outside its choices is an error naming the allowed values, and nothing given empty is silently
replaced by a default. The defaults are the project's params.yaml values (a test checks it); a
command run where there is no params file at the default path uses them (`Params.builtin`).

A stage reads only its own section (`Params.section`), with the options the user gave laid over
it; `validate_params` checks a whole file, sections against each other too (`mer doctor`).
The models are in `pipeline.config.sections`; this module reads params files and words the errors.
"""

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.sections import (
    ALIGN_METHODS,
    ALIGN_ON_ERROR,
    APEX_SOURCES,
    BACKENDS,
    BUILTIN_SECTIONS,
    DEVICES,
    DI_VARIANTS,
    MAPPING_SECTIONS,
    MISSING_CLASS,
    MODES,
    PHASES_ALL,
    PHASES_FULL,
    SECTIONS,
    WEIGHTING_KEYS,
    AlignSection,
    AlignSettings,
    AnnotateSection,
    AugmentSettings,
    DatasetEntry,
    DemoSection,
    DynimgSection,
    EvaluateSection,
    ExperimentSection,
    Mode,
    ReportSection,
    TrainSection,
    builtin_section,
    parse_phase_spec,
)
from pipeline.errors import MerError, SettingsError

__all__ = [
    "ALIGN_METHODS",
    "ALIGN_ON_ERROR",
    "APEX_SOURCES",
    "BACKENDS",
    "BUILTIN_SECTIONS",
    "DEVICES",
    "DI_VARIANTS",
    "MAPPING_SECTIONS",
    "MISSING_CLASS",
    "MODES",
    "PHASES_ALL",
    "PHASES_FULL",
    "SECTIONS",
    "WEIGHTING_KEYS",
    "AlignSection",
    "AlignSettings",
    "AnnotateSection",
    "AugmentSettings",
    "DatasetEntry",
    "DemoSection",
    "DynimgSection",
    "EvaluateSection",
    "ExperimentSection",
    "Mode",
    "Params",
    "ReportSection",
    "TrainSection",
    "builtin_section",
    "load_params",
    "load_section",
    "option_flag",
    "parse_phase_spec",
    "read_params_file",
    "section_problems",
    "validate_params",
]

DEFAULT_PARAMS_FILE = "params.yaml"


# ---------------------------------------------------------------------------------------------
# Messages


def _model_at(section: str, loc: tuple) -> type[BaseModel] | None:
    """The model whose keys the last element of `loc` is one of (for did-you-mean)."""
    model: type[BaseModel] | None = SECTIONS[section]
    if section in MAPPING_SECTIONS:
        loc = loc[1:]
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _reason(error: dict, section: str) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "extra_forbidden":
        model = _model_at(section, loc)
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown key{hint} (allowed keys: {', '.join(known)})"
    if kind == "literal_error":
        return f"allowed: {error['ctx']['expected']}"
    if kind == "missing":
        return "missing: this key is required"
    got = type(error.get("input")).__name__
    if kind in _TYPE_NAMES:
        quoted = " (write it without quotes)" if isinstance(error.get("input"), str) else ""
        if kind == "float_type" and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", str(error.get("input"))):
            quoted = f" (YAML reads {error['input']} as text: write it with a dot, e.g. 1.0e-3)"
        return f"must be {_TYPE_NAMES[kind]}, got a {got}{quoted}"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message.replace("Input should be", "must be")


_TYPE_NAMES = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "tuple_type": "a [min, max] pair",
}


def _describe(errors: list[dict], section: str, prefix: tuple, options: Mapping[str, str]) -> list[str]:
    lines = []
    for error in errors:
        loc = (*prefix, *(str(part) for part in error["loc"]))
        shown = "" if error["type"] == "missing" or not error["loc"] else f" = {error['input']!r}"
        where = f" ({options[loc[0]]})" if loc and loc[0] in options else ""
        lines.append(f"{'.'.join((section, *loc))}{shown}{where}: {_reason({**error, 'loc': loc}, section)}")
    return lines


def _validate(model: type[BaseModel], data: Any, section: str, prefix: tuple, options: Mapping[str, str]):
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, _describe(exc.errors(), section, prefix, options)


def section_problems(section: str, data: Any, options: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """(validated section or None, one line per problem) of one section's data.

    `datasets` gives {name: DatasetEntry}; `models` gives {model: its keys}, each checked as train
    keys; every other section its model.
    """
    if not isinstance(data, Mapping):
        return None, [f"{section}: must be a mapping of settings, got {data!r}"]
    if section not in MAPPING_SECTIONS:
        return _validate(SECTIONS[section], dict(data), section, (), options or {})
    if not data and section == "datasets":
        return None, ["datasets: lists no dataset; give at least one, e.g. casme2: {format: casme2, root: ...}"]
    entries, problems = {}, []
    for name, entry in data.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            problems.append(f"{section}.{name}: a name may hold only letters, digits, '_', '-' and '.'")
        elif not isinstance(entry, Mapping):
            problems.append(f"{section}.{name} must be a mapping of settings, got {entry!r}")
        else:
            model, found = _validate(SECTIONS[section], dict(entry), section, (str(name),), {})
            entries[str(name)] = model if section == "datasets" else dict(entry)
            problems += found
    return (None if problems else entries), problems


# ---------------------------------------------------------------------------------------------
# Params files


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MerError(f"params file not found: {path} (pass --params FILE or run from the project folder)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MerError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MerError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Params:
    """A params file, or the built-in defaults where there is none (`builtin`)."""

    path: Path
    data: dict[str, Any]
    builtin: bool = False
    label: str | None = None  # how messages name these params when they are not just the file

    @property
    def source(self) -> str:
        return self.label or ("built-in defaults" if self.builtin else str(self.path))

    def raw(self, section: str, *, required: bool = True) -> dict[str, Any]:
        """The section as written (the built-in defaults when there is no params file)."""
        if self.builtin:
            return builtin_section(section)
        if section not in self.data:
            if not required:
                return {}
            raise MerError(f"{self.path} has no '{section}' section; add one (see the project's params.yaml)")
        value = self.data[section]
        if not isinstance(value, dict):
            raise MerError(f"{self.path}: section '{section}' must be a mapping, got {type(value).__name__}")
        return value

    def with_assignments(self, assignments: list[str]) -> "Params":
        """These params with `SECTION.KEY[.KEY...]=VALUE` assignments (`--set`) laid over them; each
        VALUE is read as YAML, like the file (`5`, `true`, `[onset, apex]`), and validated with it."""
        if not assignments:
            return self
        data = {name: self.raw(name, required=False) for name in SECTIONS} if self.builtin else dict(self.data)
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            path = [part for part in key.strip().split(".") if part]
            if not sep or len(path) < 2:
                raise MerError(f"--set {assignment!r}: write SECTION.KEY=VALUE, e.g. --set train.epochs=5")
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError as exc:
                raise MerError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
            if path[0] not in SECTIONS:
                close = difflib.get_close_matches(path[0], list(SECTIONS), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise MerError(
                    f"--set {assignment!r}: unknown section {path[0]!r}{hint} (sections: {', '.join(SECTIONS)})"
                )
            node = data.setdefault(path[0], {})
            data[path[0]] = node = dict(node) if isinstance(node, dict) else node
            for part in path[1:-1]:
                if not isinstance(node, dict):
                    raise MerError(f"--set {assignment!r}: {'.'.join(path[:-1])} is not a mapping")
                node[part] = node = dict(node.get(part) or {})
            if not isinstance(node, dict):
                raise MerError(f"--set {assignment!r}: {'.'.join(path[:-1])} is not a mapping")
            node[path[-1]] = value
        params = Params(self.path, data, builtin=False, label=f"{self.source} with --set {' '.join(assignments)}")
        for name in dict.fromkeys(a.partition("=")[0].strip().split(".")[0] for a in assignments):
            if name not in MAPPING_SECTIONS:  # checked now even where this stage does not read the section
                params.section(name)
        return params

    def section(self, section: str, *, required: bool = True, **options: Any) -> Any:
        """The validated section with the options the user gave (not None) laid over it.

        Raises SettingsError naming the params file, each key, its value and what is allowed; an
        option's value is named by its flag (`--on-error`).
        """
        data = {**self.raw(section, required=required)}
        given = {key: value for key, value in options.items() if value is not None}
        data.update(given)
        model, problems = section_problems(section, data, {key: f"option {option_flag(key)}" for key in given})
        if problems:
            raise SettingsError(f"{self.source}: invalid {section} settings", problems)
        return model


def option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def load_params(params_file: str | Path = DEFAULT_PARAMS_FILE, *, explicit: bool = True) -> Params:
    """The params file; with `explicit` False a missing file means the built-in defaults."""
    path = Path(params_file)
    if not explicit and not path.exists():
        return Params(path, {}, builtin=True)
    return Params(path, read_params_file(path))


def load_section(params_file: str | Path, section: str) -> dict[str, Any]:
    """One section of a params file as written (kept for scripts: benchmarks read sections this way)."""
    return Params(Path(params_file), read_params_file(params_file)).raw(section)


def validate_params(data: Mapping[str, Any], source: str | Path) -> list[str]:
    """Every problem of a whole params file: each section's, unknown sections, and across sections."""
    problems, models = [], {}
    for name, value in data.items():
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), list(SECTIONS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{name}: unknown section{hint} (sections: {', '.join(SECTIONS)})")
            continue
        models[name], found = section_problems(name, value)
        problems += found
    missing = [name for name in SECTIONS if name not in data]
    if missing:
        problems.append(f"lacks section(s) {', '.join(missing)}: compare with the project's params.yaml")
    problems += _across_sections(data, models)
    return [f"{source}: {p}" if not p.startswith(str(source)) else p for p in problems]


def _across_sections(data: Mapping[str, Any], models: Mapping[str, Any]) -> list[str]:
    problems = []
    experiment, datasets = models.get("experiment"), models.get("datasets")
    if experiment and datasets:
        unknown = [name for name in experiment.datasets if name not in datasets]
        if unknown:
            problems.append(f"experiment.datasets = {unknown}: not in the datasets section ({', '.join(datasets)})")
    report = models.get("report")
    if experiment and report and report.reference_mode not in experiment.modes:
        problems.append(
            f"report.reference_mode = {report.reference_mode!r}: not one of experiment.modes "
            f"({', '.join(experiment.modes)}); no gain could be reported"
        )
    dynimg, train = models.get("dynimg"), models.get("train")
    if experiment and dynimg and train:
        made = set(dynimg.phases)
        for model in experiment.models:
            entry = (models.get("models") or {}).get(model) or {}
            for mode in experiment.modes:
                cell = {**data["train"], **entry, "model": model, "mode": mode}
                cell.pop("train_phases", None), cell.pop("test_phases", None)  # `--mode` drops them
                try:
                    cell = TrainSection.model_validate(cell)
                except ValidationError:
                    continue  # reported with its section
                missing = sorted(cell.phases_needed - made)
                if missing:
                    problems.append(
                        f"dynimg.phases lacks {', '.join(missing)}, which {model} {mode} (experiment) trains or tests on"
                    )
    return list(dict.fromkeys(problems))
