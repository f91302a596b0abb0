"""The train stage's settings: modes, validation of a params section, and where each setting comes from.

Modes are presets of the paper's comparison (`MODES`):

    baseline            train on `full`
    baseline_steps      train on `full` for as many optimizer steps as dual_phase takes over the
                        same epochs (the equal-budget baseline; more epochs, the last one partial)
    spatial             train on `full`, with spatial augmentation (pipeline/train/augment.py)
    dual_phase          train on `full`, `onset_apex`, `apex_offset`: each phase DI a separate
                        sample with the clip's label (3 samples per training clip)
    dual_phase_spatial  both

Beyond the paper (its future work; README "Beyond the paper"), each a variant of dual_phase with
three samples per training clip, so baseline_steps is their equal-budget baseline too:

    dual_phase_peak     full + onset_peak + peak_offset: the split at each clip's motion peak
                        (dynimg phases [onset, peak], [peak, offset]; the annotated apex ignored)
    dual_phase_motion   full + motion_rise + motion_decay: split where the clip's cumulative motion
                        reaches a fraction (dynimg phases [onset, mNN], [mNN, offset])
    dual_phase_jitter   dual_phase with each phase DI drawn per clip and epoch from the cache's K
                        jittered ones (dynimg.jitter_draws), seeded per fold
    dual_phase_weighted dual_phase with the phase samples weighted `phase_weight` in the loss
    dual_phase_decay    the phase samples' weight moves linearly from 1 (first epoch) to
                        `phase_weight_final` (last epoch); the full DI keeps weight 1

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

from pipeline.config import (
    BACKENDS,
    DEVICES,
    MISSING_CLASS,
    MODES,
    PHASES_ALL,
    PHASES_FULL,
    WEIGHTING_KEYS,
    Mode,
    Params,
    TrainSection,
    load_params,
    option_flag,
    section_problems,
)
from pipeline.errors import MerError, SettingsError
from pipeline.train.augment import AugmentSettings
from pipeline.train.models import resolve_input_size

__all__ = ["BACKENDS", "DEVICES", "MISSING_CLASS", "MODES", "PHASES_ALL", "PHASES_FULL", "Mode", "TrainSettings"]

# Settings that change how a run executes or what it checks, never its numbers: they are left out of
# run.json's params and of the run key (`threads` is resolved to the torch threads per fold instead).
EXECUTION_KEYS = ("jobs", "backend", "scheduler", "missing_class")


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a run, resolved from the validated train section (`TrainSection`).

    `augment` is None unless the mode is a spatial one; `input_size` is resolved for `model`; the
    phase lists are the mode's unless given; `threads` None means `auto`.
    """

    model: str
    mode: str
    train_phases: tuple[str, ...]
    test_phases: tuple[str, ...]
    test_fusion: bool
    input_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    schedule: str
    warmup_epochs: float
    seed: int
    device: str
    amp: bool
    pretrained: bool
    weights: str | None
    augment: AugmentSettings | None
    backend: str
    scheduler: str | None
    jobs: int
    threads: int | None  # torch threads per fold; None (params `auto`): cores // jobs
    missing_class: str
    cpu_kernels: str  # portable: the same bytes on any x86-64 CPU | native (pipeline/train/kernels.py)
    phase_weight: float = 0.5
    phase_weight_final: float = 0.0

    @classmethod
    def from_section(cls, section: TrainSection) -> TrainSettings:
        mode = MODES[section.mode]
        values = section.model_dump(exclude={"augment"})
        values.update(
            train_phases=tuple(section.train_phases or mode.train_phases),
            test_phases=tuple(section.test_phases or (PHASES_ALL if section.test_fusion else PHASES_FULL)),
            input_size=resolve_input_size(section.model, section.input_size),
            augment=section.augment if mode.spatial else None,
            threads=None if section.threads == "auto" else section.threads,
        )
        return cls(**values)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSettings:
        """From a train params section (keys left out take the defaults); SettingsError (a ValueError)
        names every unknown key and bad value."""
        section, problems = section_problems("train", params)
        if problems:
            raise SettingsError("invalid train settings", problems)
        return cls.from_section(section)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train_phases"], data["test_phases"] = list(self.train_phases), list(self.test_phases)
        data["augment"] = self.augment.to_dict() if self.augment else None
        data["threads"] = "auto" if self.threads is None else self.threads
        return data

    def result_settings(self) -> dict[str, Any]:
        """The settings the numbers depend on (run.json `params`): `to_dict` without EXECUTION_KEYS,
        and without the phase-weighting keys in modes that do not weight (their run.json is unchanged)."""
        weighting = MODES[self.mode].weighting
        used = {"fixed": "phase_weight", "decay": "phase_weight_final"}.get(weighting or "")
        skip = set(EXECUTION_KEYS) | {key for key in WEIGHTING_KEYS if key != used}
        return {key: value for key, value in self.to_dict().items() if key not in skip}

    def phase_weight_at(self, epoch: int, epochs: int) -> float:
        """The phase samples' loss weight in `epoch` (1-based) of `epochs` (the full DI's is 1)."""
        weighting = MODES[self.mode].weighting
        if weighting == "fixed":
            return self.phase_weight
        if weighting == "decay":
            t = (epoch - 1) / (epochs - 1) if epochs > 1 else 0.0
            return (1.0 - t) + self.phase_weight_final * t
        return 1.0


def model_settings(params: Params, model: str) -> dict[str, Any]:
    """The `models.NAME` section of the params, or nothing when the model has none."""
    entry = params.raw("models", required=False).get(model) or {}
    if not isinstance(entry, dict):
        raise MerError(f"{params.source}: models.{model} must be a mapping of train settings, got {entry!r}")
    return entry


def resolve_train_settings(params: Params | str | Path, **options: Any) -> TrainSettings:
    """The settings of a run: `options` (train keys; None = not given) over `models.NAME` over `train`.

    Per-model settings lie between the train section and the options so that each model of an
    experiment can differ, and changing one reruns only its cells. A given `mode` drops the phase
    lists of the params file (an explicit mode wins over them). Invalid settings raise SettingsError
    naming the params file (or the option), the key, its value and what is allowed.
    """
    if not isinstance(params, Params):
        params = load_params(params)
    given = {key: value for key, value in options.items() if value is not None}
    merged = {**params.raw("train"), **given}
    entry = model_settings(params, str(merged.get("model", "learnet")))
    merged.update(entry)
    merged.update(given)
    if "mode" in given:
        merged.pop("train_phases", None)
        merged.pop("test_phases", None)
    flags = {key: f"set in models.{merged.get('model')}" for key in entry}
    flags.update({key: f"option {option_flag(key)}" for key in given})
    section, problems = section_problems("train", merged, flags)
    if problems:
        raise SettingsError(f"{params.source}: invalid train settings", problems)
    try:
        return TrainSettings.from_section(section)
    except ValueError as exc:
        raise MerError(f"{params.source}: invalid train settings: {exc}") from exc


def weights_key(params: Params | str | Path, model: str) -> str:
    """The params key that names `model`'s weights file, for messages: `models.NAME.weights` when set
    there, else `train.weights`."""
    if not isinstance(params, Params):
        params = load_params(params)
    return f"models.{model}.weights" if model_settings(params, model).get("weights") else "train.weights"
