"""The models of the params sections: every key, its default, type, range and choices.

One pydantic model per section (`SECTIONS`), strict (`"false"` is not a boolean, 1.9 is not a
count; an int is fine where a float is expected) and closed (`extra="forbid"`). The defaults are
the project's params.yaml values (tests/test_settings.py checks it). The choices shared with the
modules that act on them live here, so that validating a section never imports torch, OpenCV or
h5py (the test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from pipeline.datasets.layouts import DATASETS, DEFAULT_FOLDER_PATTERN
from pipeline.demo.presets import FORMAT_CHOICES, PRESET_NAMES
from pipeline.dynimg.phases import DEFAULT_PHASES, PhaseBound, parse_phases

PHASES_FULL = ("full",)
PHASES_ALL = ("full", "onset_apex", "apex_offset")


@dataclass(frozen=True)
class Mode:
    train_phases: tuple[str, ...]
    spatial: bool
    # Train for as many optimizer steps as this mode takes over the same epochs (the equal-budget
    # baseline); None: the epochs set the steps.
    steps_of: str | None = None
    # Beyond the paper: one phase DI of the cache's K jittered ones per clip and epoch (dynimg.jitter_draws)
    jitter: bool = False
    # The phase samples' weight in the loss: None (1, like the full DI), fixed (`phase_weight`) or
    # decay (from 1 at the first epoch to `phase_weight_final` at the last, linearly)
    weighting: str | None = None
    # The mode this one varies (its results-table gain is also shown against it)
    variant_of: str | None = None


PHASES_PEAK = ("full", "onset_peak", "peak_offset")  # dynimg phases [onset, peak], [peak, offset]
PHASES_MOTION = ("full", "motion_rise", "motion_decay")  # dynimg phases [onset, mNN], [mNN, offset]
MODES: dict[str, Mode] = {
    "baseline": Mode(PHASES_FULL, False),
    "baseline_steps": Mode(PHASES_FULL, False, steps_of="dual_phase"),
    "spatial": Mode(PHASES_FULL, True),
    "dual_phase": Mode(PHASES_ALL, False),
    "dual_phase_spatial": Mode(PHASES_ALL, True),
    "dual_phase_peak": Mode(PHASES_PEAK, False, variant_of="dual_phase"),
    "dual_phase_motion": Mode(PHASES_MOTION, False, variant_of="dual_phase"),
    "dual_phase_jitter": Mode(PHASES_ALL, False, jitter=True, variant_of="dual_phase"),
    "dual_phase_weighted": Mode(PHASES_ALL, False, weighting="fixed", variant_of="dual_phase"),
    "dual_phase_decay": Mode(PHASES_ALL, False, weighting="decay", variant_of="dual_phase"),
}
WEIGHTING_KEYS = ("phase_weight", "phase_weight_final")  # in run.json only for the modes that use them
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("loky", "dask")
MISSING_CLASS = ("error", "warn")
CPU_KERNELS = ("portable", "native")  # train.cpu_kernels: pipeline/train/kernels.py
ALIGN_METHODS = ("landmarks", "resize")
ALIGN_ON_ERROR = ("fail", "skip")
DI_VARIANTS = ("harmonic", "linear")
DEGENERATE_POLICIES = ("widen", "drop", "keep")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
APEX_SOURCES = ("annotated_or_estimated", "annotated", "estimated")
APEX_OUTSIDE = ("estimate", "error")
FRAME_ORDER = ("fail", "drop")

ModeName = Literal[tuple(MODES)]  # type: ignore[valid-type]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # YAML has lists, never tuples


# ---------------------------------------------------------------------------------------------
# demo, datasets, experiment


class DemoSection(_Model):
    """`mer demo-data`: synthetic CASME II / SAMM copies."""

    preset: Literal[PRESET_NAMES] = "demo"  # type: ignore[valid-type]
    format: Literal[FORMAT_CHOICES] = "both"  # type: ignore[valid-type]
    seed: int = Field(7, ge=0)
    jobs: int = Field(2, ge=1)


class DatasetEntry(_Model):
    """One dataset the pipeline runs on (dvc.yaml's `foreach: ${datasets}`)."""

    format: Literal[DATASETS]  # type: ignore[valid-type]
    root: str = Field(min_length=1)
    coding: str = Field(min_length=1)
    classes: str = Field(min_length=1)


class ExperimentSection(_Model):
    """The experiment's cells: every dataset x model x mode is one train/evaluate run."""

    datasets: list[Name] = Field(["casme2", "samm"], min_length=1)
    models: list[Name] = Field(["learnet"], min_length=1)
    modes: list[ModeName] = Field(["baseline", "baseline_steps", "dual_phase"], min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1], min_length=1)  # training seeds per cell

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value


# ---------------------------------------------------------------------------------------------
# align, annotate, dynimg


class AlignSettings(_Model):
    """How one clip is aligned (recorded with every aligned clip; `--resume` compares them)."""

    size: int = Field(224, ge=16, le=4096)  # square output crop
    eye_distance: float = Field(0.38, gt=0, lt=1)  # inter-ocular distance / crop width
    eye_height: float = Field(0.36, gt=0, lt=1)  # eye line / crop height
    detect_max_side: int = Field(640, ge=32)  # larger frames are downscaled before detection
    upsample: int = Field(1, ge=0, le=4)  # extra dlib upsampling passes when the first finds nothing
    reference_candidates: int = Field(5, ge=1)  # frames tried, from the first, until a face is found
    method: Literal[ALIGN_METHODS] = "landmarks"  # type: ignore[valid-type]
    redetect_every: int = Field(0, ge=0)  # 0: one transform per clip; k > 0: re-detect every k frames
    smooth_window: int = Field(3, ge=1)  # detections averaged when redetect_every > 0

    def record(self) -> str:
        """The settings as stored with every clip (JSON): `--resume` reuses clips only when equal."""
        import json

        return json.dumps(self.model_dump(), sort_keys=True)


class AlignSection(AlignSettings):
    """The align section: the clip settings plus the error policy, folder pattern and jobs."""

    on_error: Literal[ALIGN_ON_ERROR] = "fail"  # type: ignore[valid-type]
    folder_pattern: str | None = Field(DEFAULT_FOLDER_PATTERN, min_length=1)  # None: the format's layout
    jobs: int = Field(2, ge=1)

    def settings(self) -> AlignSettings:
        return AlignSettings(**self.model_dump(include=set(AlignSettings.model_fields)))


def _sheet(value: Any) -> Any:
    """A workbook sheet's name: YAML reads a sheet named 2019 as a number."""
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"sheet must be the name of a workbook sheet (or null), got {value!r}")


class AnnotateSection(_Model):
    on_problem: Literal["fail", "drop"] = "fail"
    overrides: str | None = Field(None, min_length=1)  # per-clip corrections file
    folder_pattern: str | None = Field(None, min_length=1)  # None: the format's layout
    sheet: Annotated[Any, BeforeValidator(_sheet)] = None  # None: the one sheet holding a coding table
    apex_outside: Literal[APEX_OUTSIDE] | None = None  # type: ignore[valid-type]  # None: the format's rule
    frame_order: Literal[FRAME_ORDER] | None = None  # type: ignore[valid-type]  # None: the format's rule
    classes: str | None = Field(None, min_length=1)


def parse_phase_spec(spec: Any) -> dict[str, tuple[PhaseBound, PhaseBound]]:
    """{name: [start, end]} into bounds; ValueError naming the phase, the value and what is allowed."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"must be a mapping of phase names to [start, end] pairs, e.g. {DEFAULT_PHASES}")
    if not spec:
        raise ValueError("is empty: give at least one phase, e.g. full: [onset, offset]")
    for name, bounds in spec.items():
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(isinstance(b, str) for b in bounds):
            raise ValueError(f"phase {name!r} must be a [start, end] pair of anchors, got {bounds!r}")
    return parse_phases(spec)


Anchor = Literal["onset", "apex", "offset"]
Override = Annotated[dict[Anchor, Annotated[int, Field(ge=0)]], Field(min_length=1)]


class DynimgSection(_Model):
    variant: Literal[DI_VARIANTS] = "harmonic"  # type: ignore[valid-type]
    normalize: Literal["global", "per_channel"] = "global"
    size: int | None = Field(None, ge=8, le=4096)  # stored DI size; None: the aligned crop size (never enlarged)
    phases: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_PHASES.items()})
    min_phase_frames: int = Field(2, ge=1)
    degenerate: Literal[DEGENERATE_POLICIES] = "widen"  # type: ignore[valid-type]  # short / duplicate phases
    apex: Literal[APEX_SOURCES] = "annotated_or_estimated"  # type: ignore[valid-type]
    outside_clip: Literal["error", "drop"] = "error"  # phase anchors beyond a clip: refuse, or leave the clip out
    overrides: dict[str, Override] = Field(default_factory=dict)
    classes: str | None = Field(None, min_length=1)
    jobs: int = Field(2, ge=1)
    # Phase jitter (mode dual_phase_jitter): per clip and phase other than the full one, this many
    # DIs of windows whose bounds are drawn within jitter_frames of the phase's, inside onset..offset
    jitter_draws: int = Field(0, ge=0, le=64)  # 0: none (the cache holds no jitter group)
    jitter_frames: int = Field(2, ge=0)
    jitter_seed: int = Field(0, ge=0)

    @field_validator("phases", mode="before")
    @classmethod
    def _phases(cls, value: Any) -> Any:
        parse_phase_spec(value)
        return value

    def parsed_phases(self) -> dict[str, tuple[PhaseBound, PhaseBound]]:
        return parse_phase_spec(self.phases)

    def record(self) -> dict[str, Any]:
        """The settings stored in the DI cache (and hashed into its fingerprint): all but `jobs`, and
        the jitter keys only when jitter is on, so caches without jitter keep their bytes."""
        exclude = {"jobs"} | ({"jitter_draws", "jitter_frames", "jitter_seed"} if not self.jitter_draws else set())
        return self.model_dump(mode="json", exclude=exclude)


# ---------------------------------------------------------------------------------------------
# train, models, evaluate, report


class AugmentSettings(_Model):
    """Spatial augmentation of the spatial modes (pipeline/train/augment.py applies it)."""

    flip: bool = True  # horizontal mirror, probability 0.5
    rotation: float = Field(10.0, ge=0, le=180)  # degrees, uniform in [-rotation, rotation]
    scale: Annotated[tuple[float, float], BeforeValidator(_pair)] = (1.0, 1.0)  # zoom range; > 1 zooms in
    translate: float = Field(0.0, ge=0, lt=1)  # shift up to this fraction of the image side
    jitter: float = Field(0.0, ge=0, lt=1)  # contrast x [1-j, 1+j], brightness +-j x image std

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"augment.scale must be [min, max] with 0 < min <= max, got {list(value)}")
        return value

    @property
    def geometric(self) -> bool:
        return self.rotation > 0 or self.scale != (1.0, 1.0) or self.translate > 0

    @property
    def active(self) -> bool:
        return self.flip or self.geometric or self.jitter > 0

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["scale"] = list(self.scale)
        return data


def _input_size(value: Any) -> Any:
    def size(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if value is None or size(value):
        return value
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and size(v) for k, v in value.items()):
        return dict(value)
    raise ValueError(
        f"input_size must be a whole number of pixels >= 1 or a mapping such as {{learnet: 112, default: 224}}, got {value!r}"
    )


def _threads(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"threads must be auto or a number of torch threads per fold >= 1, got {value!r}")


PhaseList = Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]], Field(min_length=1)]


class TrainSection(_Model):
    """The train section (and each `models.NAME`, laid over it)."""

    model: str = Field("learnet", min_length=1)  # learnet or any timm name
    mode: ModeName = "dual_phase"
    train_phases: PhaseList | None = None  # None: the mode's phases
    test_phases: PhaseList | None = None  # None: full, or all three with test_fusion
    test_fusion: bool = False
    input_size: Annotated[Any, BeforeValidator(_input_size)] = 224  # None: the model's own size
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.0001, ge=0)
    optimizer: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]  # adamw: decoupled weight decay
    schedule: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]  # cosine: decay to 0 over the steps
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from 0, in epochs of the run's steps
    seed: int = Field(0, ge=0)
    device: Literal[DEVICES] = "auto"  # type: ignore[valid-type]
    amp: bool = False
    pretrained: bool = False
    weights: str | None = Field(None, min_length=1)
    augment: AugmentSettings = AugmentSettings()
    backend: Literal[BACKENDS] = "loky"  # type: ignore[valid-type]
    scheduler: str | None = Field(None, min_length=1)
    jobs: int = Field(2, ge=1)
    threads: Annotated[Any, BeforeValidator(_threads)] = 1  # a number: bytes independent of the cores
    missing_class: Literal[MISSING_CLASS] = "error"  # type: ignore[valid-type]
    cpu_kernels: Literal[CPU_KERNELS] = "portable"  # type: ignore[valid-type]
    phase_weight: float = Field(0.5, ge=0)  # dual_phase_weighted: the phase samples' weight in the loss (full: 1)
    phase_weight_final: float = Field(0.0, ge=0)  # dual_phase_decay: phase weight from 1 to this at the last epoch

    @model_validator(mode="after")
    def _consistent(self) -> TrainSection:
        if self.test_fusion and self.test_phases is not None:
            raise ValueError("give either test_fusion: true or test_phases, not both")
        if MODES[self.mode].spatial and not self.augment.active:
            raise ValueError(
                f"mode {self.mode} needs at least one augmentation in `augment` (flip, rotation, scale, translate, jitter)"
            )
        return self

    @property
    def phases_needed(self) -> set[str]:
        train = self.train_phases or MODES[self.mode].train_phases
        test = self.test_phases or (PHASES_ALL if self.test_fusion else PHASES_FULL)
        return set(train) | set(test)


class EvaluateSection(_Model):
    confusion_normalize: bool = True  # also draw the row-normalized confusion matrix
    bootstrap: int = Field(1000, ge=0)  # subject-bootstrap resamples (0: no intervals)
    confidence: float = Field(0.95, gt=0, lt=1)  # interval level


class ReportSection(_Model):
    reference_mode: ModeName = "baseline"  # gains are reported against this mode, on the same clips
    # and against the mode of the same phases and optimizer steps as each mode (baseline_steps)
    bootstrap: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)


# The model of each section; `datasets` and `models` map names to entries of their model.
MAPPING_SECTIONS = ("datasets", "models")
SECTIONS: dict[str, type[BaseModel]] = {
    "demo": DemoSection,
    "datasets": DatasetEntry,  # per entry: {name: DatasetEntry}
    "experiment": ExperimentSection,
    "models": TrainSection,  # per entry: {model name: train keys laid over the train section}
    "align": AlignSection,
    "annotate": AnnotateSection,
    "dynimg": DynimgSection,
    "train": TrainSection,
    "evaluate": EvaluateSection,
    "report": ReportSection,
}
BUILTIN_SECTIONS: dict[str, Any] = {
    "datasets": {
        "casme2": {
            "format": "casme2",
            "root": "cache/demo/casme2/CASME2_RAW_selected",
            "coding": "cache/demo/casme2/CASME2-coding-20140508.xlsx",
            "classes": "casme2-5",
        },
        "samm": {
            "format": "samm",
            "root": "cache/demo/samm/SAMM",
            "coding": "cache/demo/samm/SAMM_Micro_FACS_Codes_v2.xlsx",
            "classes": "samm-5",
        },
    },
    "models": {"learnet": {"input_size": 112, "epochs": 8}},
}


def builtin_section(section: str) -> dict[str, Any]:
    """The built-in defaults of a section, as a params file would write them."""
    if section in BUILTIN_SECTIONS:
        return dict(BUILTIN_SECTIONS[section])
    return SECTIONS[section]().model_dump(mode="json")
