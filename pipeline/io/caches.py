"""HDF5 caches, readable with plain h5py (DESIGN.md section 6).

Aligned cache (schema "mer.aligned"): one group per clip, /<subject>/<clip>, holding
  frames (T,H,W,3) uint8, chunked one frame per chunk; frame_numbers (T,); landmarks (68,2);
  affine (2,3); frame_affines (T,2,3) when each frame has its own transform (align.redetect_every:
  a dataset, not an attribute, as HDF5 attributes stop at 64 KB, about 1,365 frames); group
  attributes for the source folder and reference frame.
Dynamic-image cache (schema "mer.dynamic_images"): per-sample vectors sample_id, dataset,
  subject, clip, label, onset, apex, offset, apex_source (N,) and one (N,H,W,3) uint8 dataset
  per phase under images/.
Both: file attributes schema, schema_version, params (JSON), tool_version; every dataset carries
a sha256 attribute of its bytes so `mer cache verify` can detect damage. Nothing here records
times, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from pipeline import __version__
from pipeline.errors import MerError

ALIGNED_SCHEMA = "mer.aligned"
DYNAMIC_IMAGES_SCHEMA = "mer.dynamic_images"
SCHEMA_VERSION = 1
_STRING = h5py.string_dtype("utf-8")
SAMPLE_FIELDS = ("sample_id", "dataset", "subject", "clip", "label", "onset", "apex", "offset", "apex_source")
_STRING_FIELDS = {"sample_id", "dataset", "subject", "clip", "apex_source"}


def array_sha256(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    if data.dtype.kind in "OUS":
        return hashlib.sha256("\x1f".join(map(str, data.ravel())).encode()).hexdigest()
    return hashlib.sha256(data.tobytes()).hexdigest()


def _write(group: h5py.Group, name: str, data: np.ndarray, **kwargs: Any) -> h5py.Dataset:
    if data.dtype.kind in "OU":
        dataset = group.create_dataset(name, data=np.asarray(data, dtype=object), dtype=_STRING, track_times=False)
    else:
        dataset = group.create_dataset(name, data=data, track_times=False, **kwargs)
    dataset.attrs["sha256"] = array_sha256(np.asarray(data))
    return dataset


def _read(dataset: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return dataset.asstr()[()]
    return dataset[()]


def _file_attrs(handle: h5py.File, schema: str, params: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    handle.attrs["schema"] = schema
    handle.attrs["schema_version"] = SCHEMA_VERSION
    handle.attrs["tool_version"] = __version__
    handle.attrs["params"] = json.dumps(params, sort_keys=True)
    for key, value in extra.items():
        handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)


def open_cache(path: str | Path, schema: str | None = None) -> h5py.File:
    """Open a cache read-only, checking it is an HDF5 file of the expected schema."""
    path = Path(path)
    if not path.is_file():
        raise MerError(f"cache file not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise MerError(f"{path} is not a readable HDF5 file ({exc}); regenerate it with its stage") from exc
    found = handle.attrs.get("schema")
    if schema is not None and found != schema:
        handle.close()
        raise MerError(f"{path} has schema {found!r}, expected {schema!r}")
    version = int(handle.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        handle.close()
        raise MerError(f"{path} has schema version {version}, this tool reads {SCHEMA_VERSION}; regenerate it")
    return handle


# ---------------------------------------------------------------------------------------------
# Aligned cache


@dataclass
class AlignedClip:
    subject: str
    clip: str
    frames: np.ndarray  # (T,H,W,3) uint8
    frame_numbers: np.ndarray  # (T,) int
    landmarks: np.ndarray  # (68,2) float, in the source frame's pixel coordinates
    affine: np.ndarray  # (2,3) float, source -> aligned
    attrs: dict[str, Any] = field(default_factory=dict)
    frame_affines: np.ndarray | None = None  # (T,2,3) float, one transform per frame (redetect mode)
    # sha256 of datasets already computed (by a worker, in parallel), by dataset name; the writer
    # computes the others. Only for arrays that are not modified afterwards.
    checksums: dict[str, str] = field(default_factory=dict)


def frames_sha256(frames: np.ndarray) -> str:
    """array_sha256 of a uint8 frame stack, hashed in place (no copy of a C-contiguous stack)."""
    data = np.ascontiguousarray(frames, dtype=np.uint8)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def _write_hashed(group: h5py.Group, name: str, data: np.ndarray, digest: str, **kwargs: Any) -> None:
    """_write with the checksum of `data` already computed."""
    dataset = group.create_dataset(name, data=data, track_times=False, **kwargs)
    dataset.attrs["sha256"] = digest


class _CacheWriter:
    """An HDF5 file open for writing, closed by `close()` or at the end of a `with` block."""

    _handle: h5py.File

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AlignedCacheWriter(_CacheWriter):
    """Appends clips to an aligned cache; the caller owns atomic placement of the file."""

    def __init__(self, path: str | Path, dataset: str, params: Mapping[str, Any]):
        self._handle = h5py.File(path, "w", track_order=False)
        _file_attrs(self._handle, ALIGNED_SCHEMA, params, {"dataset": dataset})

    def add(self, clip: AlignedClip) -> None:
        group = self._handle.require_group(clip.subject).create_group(clip.clip)
        frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
        # Uncompressed: LZF saved only ~10 % on aligned faces, cost more than decoding in the single
        # writer, and liblzf's uninitialised hash table made identical frames compress differently.
        # The frames' checksum usually comes from the worker (the writer is the serial part).
        digest = clip.checksums.get("frames") or frames_sha256(frames)
        _write_hashed(group, "frames", frames, digest, chunks=(1, *frames.shape[1:]))
        _write(group, "frame_numbers", np.asarray(clip.frame_numbers, dtype=np.int64))
        _write(group, "landmarks", np.asarray(clip.landmarks, dtype=np.float32))
        _write(group, "affine", np.asarray(clip.affine, dtype=np.float64))
        if clip.frame_affines is not None:
            _write(group, "frame_affines", np.asarray(clip.frame_affines, dtype=np.float64))
        for key, value in clip.attrs.items():
            group.attrs[key] = value


def aligned_clip_keys(handle: h5py.File) -> list[tuple[str, str]]:
    return [(subject, clip) for subject in sorted(handle) for clip in sorted(handle[subject])]


def read_aligned_clip(handle: h5py.File, subject: str, clip: str, frames: bool = True) -> AlignedClip:
    if subject not in handle or clip not in handle[subject]:
        raise MerError(f"clip {subject}/{clip} is not in the aligned cache {handle.filename}; rerun align")
    group = handle[subject][clip]
    attrs = dict(group.attrs)
    # caches written before frame_affines became a dataset kept it as an attribute
    frame_affines = group["frame_affines"][()] if "frame_affines" in group else attrs.pop("frame_affines", None)
    return AlignedClip(
        subject=subject,
        clip=clip,
        frames=group["frames"][()] if frames else np.empty((0,), np.uint8),
        frame_numbers=group["frame_numbers"][()],
        landmarks=group["landmarks"][()],
        affine=group["affine"][()],
        attrs=attrs,
        frame_affines=None if frame_affines is None else np.asarray(frame_affines, np.float64),
    )


# ---------------------------------------------------------------------------------------------
# Dynamic-image cache


@dataclass
class DynamicImageSet:
    """The whole DI cache in memory: it is small (CASME II is about 250 clips x 3 images)."""

    samples: dict[str, np.ndarray]  # SAMPLE_FIELDS -> (N,)
    images: dict[str, np.ndarray]  # phase name -> (N,H,W,3) uint8
    label_names: list[str]
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.samples["sample_id"])

    @property
    def phases(self) -> list[str]:
        return list(self.images)


class DynamicImageWriter(_CacheWriter):
    """Writes a DI cache one sample at a time, so memory does not grow with the number of clips.

    `n` samples are added in their final order with `add`, then `finish` writes the per-sample
    columns and the checksums (each phase's sha256 is computed as its rows arrive, in order, so it
    equals the checksum of the whole dataset). The caller owns atomic placement of the file.
    """

    def __init__(
        self,
        path: str | Path,
        n: int,
        phases: Iterable[str],
        label_names: list[str],
        params: Mapping[str, Any],
        image_shape: tuple[int, int, int] | None = None,
    ):
        self._n, self._phases, self._count = n, list(phases), 0
        self._handle = h5py.File(path, "w", track_order=False)
        _file_attrs(
            self._handle, DYNAMIC_IMAGES_SCHEMA, params, {"label_names": list(label_names), "phases": self._phases}
        )
        self._group = self._handle.create_group("images")
        self._digests = {phase: hashlib.sha256() for phase in self._phases}
        if image_shape is not None:
            for phase in self._phases:
                self._create(phase, image_shape)

    def _create(self, phase: str, shape: tuple[int, ...]) -> h5py.Dataset:
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"images/{phase}: an image of shape {shape}, expected (H, W, 3)")
        return self._group.create_dataset(
            phase,
            shape=(self._n, *shape),
            dtype=np.uint8,
            chunks=(1, *shape),
            compression="gzip",
            compression_opts=4,
            track_times=False,
        )

    def add(self, images: Mapping[str, np.ndarray]) -> None:
        """The next sample's DIs, one (H,W,3) uint8 image per phase."""
        if self._count >= self._n:
            raise ValueError(f"more than the {self._n} samples this cache was created for")
        for phase in self._phases:
            image = np.ascontiguousarray(images[phase], dtype=np.uint8)
            dataset = self._group[phase] if phase in self._group else self._create(phase, image.shape)
            if dataset.shape[1:] != image.shape:
                raise ValueError(f"images/{phase}: an image of shape {image.shape}, expected {dataset.shape[1:]}")
            dataset[self._count] = image
            self._digests[phase].update(image.tobytes())
        self._count += 1

    def finish(self, samples: Mapping[str, Iterable[Any]], extra_attrs: Mapping[str, Any] | None = None) -> None:
        """Write the per-sample columns (SAMPLE_FIELDS), the images' checksums and extra file attributes."""
        if self._count != self._n:
            raise ValueError(f"{self._count} samples were added to a cache created for {self._n}")
        columns = {name: np.asarray(list(samples[name])) for name in SAMPLE_FIELDS}
        for name, column in columns.items():
            if len(column) != self._n:
                raise ValueError(f"sample field {name} has {len(column)} entries, expected {self._n}")
            _write(self._handle, name, column.astype(object if name in _STRING_FIELDS else np.int64))
        for phase, digest in self._digests.items():
            self._group[phase].attrs["sha256"] = digest.hexdigest()
        for key, value in (extra_attrs or {}).items():
            self._handle.attrs[key] = value


def write_dynamic_images(
    path: str | Path,
    samples: Mapping[str, Iterable[Any]],
    images: Mapping[str, np.ndarray],
    label_names: list[str],
    params: Mapping[str, Any],
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a complete DI cache at `path` from whole (N,H,W,3) stacks per phase."""
    n = len(list(samples["sample_id"]))
    for phase, stack in images.items():
        if stack.ndim != 4 or stack.shape[0] != n or stack.shape[3] != 3:
            raise ValueError(f"images/{phase} has shape {stack.shape}, expected ({n}, H, W, 3)")
    shape = next(iter(images.values())).shape[1:] if images else None
    with DynamicImageWriter(path, n, images, label_names, params, shape) as writer:
        for i in range(n):
            writer.add({phase: stack[i] for phase, stack in images.items()})
        writer.finish(samples, extra_attrs)


def read_dynamic_images(path: str | Path) -> DynamicImageSet:
    with open_cache(path, DYNAMIC_IMAGES_SCHEMA) as handle:
        phases = json.loads(handle.attrs.get("phases", "[]"))
        missing = [name for name in SAMPLE_FIELDS if name not in handle] + [
            f"images/{p}" for p in phases if f"images/{p}" not in handle
        ]
        if missing or "label_names" not in handle.attrs:
            missing += [] if "label_names" in handle.attrs else ["label_names attribute"]
            raise MerError(
                f"{path} lacks {', '.join(missing)}: it is damaged or incomplete; regenerate it with `mer dynimg`"
            )
        samples = {name: _read(handle[name]) for name in SAMPLE_FIELDS}
        images = {phase: handle["images"][phase][()] for phase in phases}
        attrs = {key: handle.attrs[key] for key in handle.attrs}
    label_names = json.loads(attrs["label_names"])
    return DynamicImageSet(samples=samples, images=images, label_names=label_names, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# Inspection


def verify(path: str | Path) -> list[str]:
    """Check schema, shapes and stored checksums; return the problems found (empty when sound)."""
    problems: list[str] = []
    try:
        handle = open_cache(path)
    except MerError as exc:
        return [str(exc)]
    with handle:
        schema = handle.attrs.get("schema")
        if schema not in (ALIGNED_SCHEMA, DYNAMIC_IMAGES_SCHEMA):
            return [f"{path}: unknown schema {schema!r}"]

        def check(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            stored = obj.attrs.get("sha256")
            if stored is None:
                problems.append(f"{name}: no stored checksum")
                return
            try:
                actual = array_sha256(_read(obj))
            except OSError as exc:
                problems.append(f"{name}: unreadable ({exc})")
                return
            if actual != stored:
                problems.append(f"{name}: checksum mismatch (data damaged)")

        handle.visititems(check)
        if schema == DYNAMIC_IMAGES_SCHEMA:
            n = handle["sample_id"].shape[0] if "sample_id" in handle else -1
            for name in SAMPLE_FIELDS:
                if name not in handle:
                    problems.append(f"missing dataset {name}")
                elif handle[name].shape != (n,):
                    problems.append(f"{name} has shape {handle[name].shape}, expected ({n},)")
            for phase in json.loads(handle.attrs.get("phases", "[]")):
                if f"images/{phase}" not in handle:
                    problems.append(f"missing dataset images/{phase}")
                elif handle["images"][phase].shape[0] != n or handle["images"][phase].shape[-1] != 3:
                    problems.append(
                        f"images/{phase} has shape {handle['images'][phase].shape}, expected ({n}, H, W, 3)"
                    )
        else:
            for subject, clip in aligned_clip_keys(handle):
                group = handle[subject][clip]
                for name in ("frames", "frame_numbers", "landmarks", "affine"):
                    if name not in group:
                        problems.append(f"{subject}/{clip}: missing dataset {name}")
                if (
                    "frames" in group
                    and "frame_numbers" in group
                    and group["frames"].shape[0] != group["frame_numbers"].shape[0]
                ):
                    problems.append(
                        f"{subject}/{clip}: {group['frames'].shape[0]} frames but {group['frame_numbers'].shape[0]} frame numbers"
                    )
                if (
                    "frames" in group
                    and "frame_affines" in group
                    and group["frame_affines"].shape != (group["frames"].shape[0], 2, 3)
                ):
                    problems.append(
                        f"{subject}/{clip}: frame_affines has shape {group['frame_affines'].shape}, expected ({group['frames'].shape[0]}, 2, 3)"
                    )
    return problems
