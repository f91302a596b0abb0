"""Inspection of either cache, whatever its schema: `describe` (mer cache info) and `verify`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import MerError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA, aligned_clip_keys, aligned_structure_problems
from pipeline.io.dynamic_image_cache import (
    DYNAMIC_IMAGES_SCHEMA,
    OPTIONAL_GROUPS,
    dynamic_image_structure_problems,
)
from pipeline.io.hdf5 import checksum_problems, open_cache, string_list_attr


def cache_schema(path: str | Path) -> str:
    """The schema of a cache, ALIGNED_SCHEMA or DYNAMIC_IMAGES_SCHEMA; MerError for anything else."""
    with open_cache(path) as handle:
        schema = handle.attrs.get("schema")
    if schema not in (ALIGNED_SCHEMA, DYNAMIC_IMAGES_SCHEMA):
        raise MerError(f"{path}: unknown schema {schema!r}; expected {ALIGNED_SCHEMA} or {DYNAMIC_IMAGES_SCHEMA}")
    return str(schema)


def describe(path: str | Path) -> Iterator[str]:
    """Lines for `mer cache info`: file attributes (params pretty-printed), then a summary of the contents.

    A generator, so that a damaged file still shows what could be read before the error.
    """
    with open_cache(path) as handle:
        for key in sorted(handle.attrs):
            value = handle.attrs[key]
            if key == "params":
                yield "params:"
                for line in json.dumps(json.loads(value), indent=2, sort_keys=True).splitlines():
                    yield f"  {line}"
            elif isinstance(value, np.ndarray):  # an array of strings (label_names, phases)
                yield f"{key}: {', '.join(string_list_attr(handle.attrs, key))}"
            else:
                yield f"{key}: {value}"
        if handle.attrs["schema"] == ALIGNED_SCHEMA:
            keys = aligned_clip_keys(handle)
            frames = sum(handle[s][c]["frames"].shape[0] for s, c in keys)
            shape = handle[keys[0][0]][keys[0][1]]["frames"].shape[1:] if keys else ()
            yield f"clips: {len(keys)} from {len({s for s, _ in keys})} subjects, {frames} frames of {shape}"
            return
        labels = string_list_attr(handle.attrs, "label_names")
        label = handle["label"][()]
        subjects = handle["subject"].asstr()[()]
        yield f"samples: {len(label)} from {len(set(subjects))} subjects"
        counts = Counter(label.tolist())
        yield "per class: " + ", ".join(f"{name} {counts[i]}" for i, name in enumerate(labels))
        per_subject = Counter(subjects.tolist())
        yield "per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(per_subject.items()))
        for phase in handle["images"]:
            yield f"images/{phase}: {handle['images'][phase].shape} {handle['images'][phase].dtype}"
        for group in OPTIONAL_GROUPS:
            for name, dataset in handle[group].items() if group in handle else ():
                yield f"{group}/{name}: {dataset.shape} {dataset.dtype}"
        sources = Counter(handle["apex_source"].asstr()[()].tolist())
        yield "apex source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))


def verify(path: str | Path) -> list[str]:
    """Check schema, shapes and stored checksums; return the problems found (empty when sound)."""
    try:
        handle = open_cache(path)
    except MerError as exc:
        return [str(exc)]
    with handle:
        schema = handle.attrs.get("schema")
        if schema not in (ALIGNED_SCHEMA, DYNAMIC_IMAGES_SCHEMA):
            return [f"{path}: unknown schema {schema!r}"]
        problems = checksum_problems(handle)
        if schema == DYNAMIC_IMAGES_SCHEMA:
            return problems + dynamic_image_structure_problems(handle)
        return problems + aligned_structure_problems(handle)
