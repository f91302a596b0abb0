"""The train stage's settings: modes, validation of a params section, and where each setting comes from.

Modes are presets of the paper's comparison (`MODES`):

    baseline            train on `full`
    spatial             train on `full`, with spatial augmentation (pipeline/train/augment.py)
    dual_phase          train on `full`, `onset_apex`, `apex_offset`: each phase DI a separate
                        sample with the clip's label (3 samples per training clip)
    dual_phase_spatial  both

All test on `full`; `test_fusion: true` tests on the three DIs and averages a clip's class
probabilities over them. `train_phases` / `test_phases` override the mode's phases explicitly.

A setting comes from, in order of precedence: a command-line option, the params section
`models.NAME` of the model trained, the `train` section (`resolve_train_settings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import load_section, optional_section
from pipeline.errors import MerError
from pipeline.train.augment import AugmentSettings
from pipeline.train.models import resolve_input_size

PHASES_FULL = ("full",)
PHASES_ALL = ("full", "onset_apex", "apex_offset")


@dataclass(frozen=True)
class Mode:
    train_phases: tuple[str, ...]
    spatial: bool


MODES: dict[str, Mode] = {
    "baseline": Mode(PHASES_FULL, False),
    "spatial": Mode(PHASES_FULL, True),
    "dual_phase": Mode(PHASES_ALL, False),
    "dual_phase_spatial": Mode(PHASES_ALL, True),
}
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("loky", "dask")
MISSING_CLASS = ("error", "warn")
# Settings that change how a run executes or what it checks, never its numbers: they are left out of
# run.json's params and of the run key (`threads` is resolved to the torch threads per fold instead).
EXECUTION_KEYS = ("jobs", "backend", "scheduler", "missing_class")


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of the train stage; `from_params` validates a params section.

    `augment` is None unless the mode is a spatial one. `input_size` is resolved for `model`.
    """

    model: str = "learnet"
    mode: str = "dual_phase"
    train_phases: tuple[str, ...] = PHASES_ALL
    test_phases: tuple[str, ...] = PHASES_FULL
    test_fusion: bool = False
    input_size: int = 112
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    pretrained: bool = False
    weights: str | None = None
    augment: AugmentSettings | None = None
    backend: str = "loky"
    scheduler: str | None = None
    jobs: int = 1
    threads: int | None = None  # torch threads per fold; None (params `auto`): cores // jobs
    missing_class: str = "error"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSettings:
        """Build settings from a params section; raise ValueError on unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown train keys {unknown}; known keys: {sorted(known)}")
        mode_name = str(params.get("mode", cls.mode))
        if mode_name not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode_name!r}")
        mode = MODES[mode_name]
        test_fusion = bool(params.get("test_fusion", cls.test_fusion))
        if test_fusion and params.get("test_phases"):
            raise ValueError("give either test_fusion: true or test_phases, not both")
        train_phases = params.get("train_phases") or mode.train_phases
        test_phases = params.get("test_phases") or (PHASES_ALL if test_fusion else PHASES_FULL)
        for name, phases in (("train_phases", train_phases), ("test_phases", test_phases)):
            if isinstance(phases, str) or not all(isinstance(p, str) for p in phases):
                raise ValueError(f"{name} must be a list of phase names, got {phases!r}")
        device = str(params.get("device", cls.device))
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        backend = str(params.get("backend", cls.backend))
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        scheduler = params.get("scheduler") or None
        if scheduler is not None and not isinstance(scheduler, str):
            raise ValueError(f"scheduler must be an address such as tcp://host:8786, got {scheduler!r}")
        augment_params = params.get("augment")
        if augment_params is not None and not isinstance(augment_params, Mapping):
            raise ValueError(f"augment must be a mapping such as {{flip: true, rotation: 10}}, got {augment_params!r}")
        augment = AugmentSettings.from_params(augment_params)  # validated whatever the mode
        if not mode.spatial:
            augment = None
        elif not augment.active:
            raise ValueError(
                f"mode {mode_name} needs at least one augmentation in `augment` (flip, rotation, scale, translate, jitter)"
            )
        threads = params.get("threads")
        if threads in (None, "auto"):
            threads = None
        elif (
            isinstance(threads, bool)
            or not isinstance(threads, (int, str))
            or not str(threads).isdigit()
            or int(threads) < 1
        ):
            raise ValueError(f"threads must be auto or a number of torch threads per fold >= 1, got {threads!r}")
        missing_class = str(params.get("missing_class", cls.missing_class))
        if missing_class not in MISSING_CLASS:
            raise ValueError(f"missing_class must be one of {MISSING_CLASS}, got {missing_class!r}")
        model = str(params.get("model", cls.model))
        settings = cls(
            model=model,
            mode=mode_name,
            train_phases=tuple(train_phases),
            test_phases=tuple(test_phases),
            test_fusion=test_fusion,
            input_size=resolve_input_size(model, params.get("input_size")),
            epochs=int(params.get("epochs", cls.epochs)),
            batch_size=int(params.get("batch_size", cls.batch_size)),
            lr=float(params.get("lr", cls.lr)),
            weight_decay=float(params.get("weight_decay", cls.weight_decay)),
            seed=int(params.get("seed", cls.seed)),
            device=device,
            amp=bool(params.get("amp", cls.amp)),
            pretrained=bool(params.get("pretrained", cls.pretrained)),
            weights=str(params["weights"]) if params.get("weights") else None,
            augment=augment,
            backend=backend,
            scheduler=str(scheduler) if scheduler else None,
            jobs=int(params.get("jobs", cls.jobs)),
            threads=None if threads is None else int(threads),
            missing_class=missing_class,
        )
        for name in ("input_size", "epochs", "batch_size", "jobs"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
        if settings.lr <= 0 or settings.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        return settings

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train_phases"], data["test_phases"] = list(self.train_phases), list(self.test_phases)
        data["augment"] = self.augment.to_dict() if self.augment else None
        data["threads"] = "auto" if self.threads is None else self.threads
        return data

    def result_settings(self) -> dict[str, Any]:
        """The settings the numbers depend on (run.json `params`): `to_dict` without EXECUTION_KEYS."""
        return {key: value for key, value in self.to_dict().items() if key not in EXECUTION_KEYS}


def model_settings(params_file: str | Path, model: str) -> dict[str, Any]:
    """The `models.NAME` section of the params file, or nothing when the model has none."""
    section = optional_section(params_file, "models").get(model) or {}
    if not isinstance(section, dict):
        raise MerError(f"{params_file}: models.{model} must be a mapping of train settings, got {section!r}")
    return section


def resolve_train_settings(params_file: str | Path, **options: Any) -> TrainSettings:
    """The settings of a run: `options` (train keys; None = not given) over `models.NAME` over `train`.

    Per-model settings lie between the train section and the options so that each model of an
    experiment can differ, and changing one reruns only its cells. A given `mode` drops the phase
    lists of the params file (an explicit mode wins over them). Invalid settings raise MerError.
    """
    given = {key: value for key, value in options.items() if value is not None}
    params = {**load_section(params_file, "train"), **given}
    params.update(model_settings(params_file, str(params.get("model", "learnet"))))
    params.update(given)
    if "mode" in given:
        params.pop("train_phases", None)
        params.pop("test_phases", None)
    try:
        return TrainSettings.from_params(params)
    except (TypeError, ValueError) as exc:
        raise MerError(f"{params_file}: invalid train settings: {exc}") from exc


def weights_key(params_file: str | Path, model: str) -> str:
    """The params key that names `model`'s weights file, for messages: `models.NAME.weights` when set
    there, else `train.weights`."""
    return f"models.{model}.weights" if model_settings(params_file, model).get("weights") else "train.weights"
