"""Class presets: which emotions a study keeps, under which labels, in which label order.

`casme2-5`, `samm-5`, `megc-3` (MEGC 2019 composite classes), `megc2019` (the official MEGC 2019
composite: megc-3 and, like the challenge, leaving out the clips whose sheet codes no apex or puts
it on the onset frame), or a user mapping {emotion: class} / {class: [emotions]} /
'emotion=class,...'. A sheet without a class spec and without a default preset (generic,
casme3, smic) keeps every emotion as its own class (`emotions`, sorted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.datasets.layouts import DATASETS, FORMATS, dataset_format
from pipeline.errors import MerError

_EVERY_DATASET = object()
# preset -> dataset (or _EVERY_DATASET) -> ((label, (emotions...)), ...) in label order.
_PRESETS: dict[str, dict[object, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "casme2-5": {
        _EVERY_DATASET: (
            ("happiness", ("happiness",)),
            ("disgust", ("disgust",)),
            ("repression", ("repression",)),
            ("surprise", ("surprise",)),
            ("others", ("others",)),
        )
    },
    "samm-5": {
        _EVERY_DATASET: (
            ("anger", ("anger",)),
            ("contempt", ("contempt",)),
            ("happiness", ("happiness",)),
            ("surprise", ("surprise",)),
            ("other", ("others",)),
        )
    },
    # MEGC 2019 composite classes: which emotions count as negative differs per dataset.
    "megc-3": {
        "casme2": (
            ("positive", ("happiness",)),
            ("negative", ("disgust", "repression")),
            ("surprise", ("surprise",)),
        ),
        "samm": (
            ("positive", ("happiness",)),
            ("negative", ("anger", "contempt", "disgust", "fear", "sadness")),
            ("surprise", ("surprise",)),
        ),
        # Other datasets (SMIC codes positive / negative / surprise directly; MMEW and CAS(ME)^3
        # code basic emotions): every negative emotion of both sheets counts as negative.
        "generic": (
            ("positive", ("happiness", "happy", "positive")),
            ("negative", ("anger", "angry", "contempt", "disgust", "fear", "sadness", "sad", "repression", "negative")),
            ("surprise", ("surprise", "surprised")),
        ),
    },
}
_PRESETS["megc2019"] = _PRESETS["megc-3"]
# preset -> clips it leaves out, beyond its classes (see EXCLUSIONS).
_PRESET_EXCLUDES = {"megc2019": ("apex not coded", "apex on onset")}
# What each exclusion leaves out, as the dropped-rows report says it.
EXCLUSIONS = {
    "apex not coded": "the sheet codes no apex ('/' or -1)",
    "apex on onset": "the apex is the onset frame (no onset-apex phase)",
}
PRESETS = tuple(_PRESETS)
EMOTIONS_SCHEME = "emotions"


@dataclass(frozen=True)
class ClassScheme:
    """Which emotions are kept and under which label; `labels` is the label order."""

    name: str
    labels: tuple[str, ...]
    mapping: Mapping[str, str]  # emotion key (see emotion_key) -> label
    excludes: tuple[str, ...] = ()  # EXCLUSIONS keys: clips the preset leaves out whatever their emotion

    def label_of(self, emotion: str) -> str | None:
        return self.mapping.get(emotion_key(emotion))


def emotion_key(emotion: str) -> str:
    """The emotion as used for class lookup: lower case, single spaces, 'other' == 'others'."""
    key = " ".join(str(emotion).split()).lower()
    return "others" if key == "other" else key


def _scheme_from_mapping(name: str, mapping: Mapping[Any, Any]) -> ClassScheme:
    """A user mapping, either {emotion: class} or {class: [emotions]}; label order = first seen."""
    if not mapping:
        raise ValueError("the class mapping is empty")
    labels: list[str] = []
    table: dict[str, str] = {}

    def add(emotion: Any, label: Any) -> None:
        if label is None or str(label).strip() == "":
            return  # an explicit null drops the emotion
        key, label = emotion_key(emotion), str(label).strip()
        if not key:
            raise ValueError(f"empty emotion name in the class mapping (class {label!r})")
        if key in table and table[key] != label:
            raise ValueError(f"emotion {emotion!r} is mapped to two classes: {table[key]!r} and {label!r}")
        table[key] = label
        if label not in labels:
            labels.append(label)

    for k, v in mapping.items():
        if isinstance(v, (list, tuple)):
            for emotion in v:
                add(emotion, k)
        else:
            add(k, v)
    if not labels:
        raise ValueError("the class mapping keeps no emotion")
    return ClassScheme(name, tuple(labels), table)


def class_scheme(spec: str | Mapping[str, Any], dataset: str) -> ClassScheme:
    """Resolve a class spec for a dataset.

    `spec` is a preset name (`casme2-5`, `samm-5`, `megc-3`, `megc2019`), a mapping {emotion: class} or
    {class: [emotions]}, or the same inline as a string: 'happiness=positive,disgust=negative'.
    The label order of a mapping is the order in which its classes first appear.
    """
    dataset_format(dataset)  # an unknown dataset is an error whatever the spec
    if isinstance(spec, Mapping):
        try:
            return _scheme_from_mapping("custom", spec)
        except ValueError as exc:
            raise MerError(f"invalid class mapping: {exc}") from exc
    text = str(spec).strip()
    if "=" in text or ":" in text:
        try:
            mapping = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                pieces = re.split(r"\s*[=:]\s*", part, maxsplit=1)
                if len(pieces) != 2:
                    raise ValueError(f"{part!r} is not 'emotion=class'")
                mapping[pieces[0]] = pieces[1]
            return _scheme_from_mapping(text, mapping)
        except ValueError as exc:
            raise MerError(f"invalid class spec {text!r}: {exc}; write it as 'emotion=class,emotion=class'") from exc
    if text not in _PRESETS:
        raise MerError(
            f"unknown class preset {text!r}; expected one of {', '.join(PRESETS)} "
            "or a mapping such as 'happiness=positive,disgust=negative,surprise=surprise'"
        )
    table = _PRESETS[text]
    groups = table.get(dataset, table.get(_EVERY_DATASET, table.get("generic")))
    return ClassScheme(
        text,
        tuple(label for label, _ in groups),
        {e: label for label, emotions in groups for e in emotions},
        _PRESET_EXCLUDES.get(text, ()),
    )


def label_names_for(spec: str | Mapping[str, Any], dataset: str = "casme2") -> list[str]:
    """The label order of a class preset or mapping: index i of this list is label i.

    Any dataset name is accepted (a composite may name its parts freely, e.g. `mmew`); names
    other than casme2 / samm resolve like `generic`. Every preset has the same label order
    for every dataset.
    """
    return list(class_scheme(spec, dataset if dataset in DATASETS else "generic").labels)


def default_label_names(datasets: Iterable[str], labels: Iterable[str]) -> list[str]:
    """The label order of a samples table annotated without a class spec, as annotate chose it.

    The default preset of the first dataset format (in `datasets` order) that has one and holds
    every label (CASME II: casme2-5, SAMM: samm-5), all its labels in preset order; otherwise the
    labels sorted, as the `emotions` scheme of a sheet without a default preset orders them.
    """
    labels = set(labels)
    for dataset in dict.fromkeys(datasets):
        preset = FORMATS[dataset].default_classes if dataset in FORMATS else None
        if preset is not None:
            order = label_names_for(preset, dataset)
            if labels <= set(order):
                return order
    return sorted(labels)


def emotions_scheme(emotions: Iterable[str]) -> ClassScheme:
    """Every emotion its own class, labels sorted: the default for a generic sheet."""
    keys = sorted({emotion_key(e) for e in emotions if emotion_key(e)})
    return ClassScheme(EMOTIONS_SCHEME, tuple(keys), {k: k for k in keys})
