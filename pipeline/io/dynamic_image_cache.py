"""The dynamic-image cache (schema "mer.dynamic_images", see docs/architecture.md): its writer and reader.

Per-sample vectors sample_id, dataset, subject, clip, label, onset, apex, offset, apex_source (N,)
and one (N,H,W,3) uint8 dataset per phase under images/. File attributes: schema,
schema_version, params (JSON), tool_version, label_names and phases (arrays of strings; caches
written before stored them as JSON lists, still read), and the stage's extras (the input
fingerprint).

Optional groups (only in caches made with the settings that need them, so others keep their
bytes): `jitter/<phase>` (N,K,H,W,3) uint8, K jittered DIs per clip, with `jitter/<phase>_frames`
(N,K,2) int64, the first and last frame of each window (file attribute `jitter`, JSON: draws,
frames, seed, phases); `motion_anchors/<name>` (N,) int64, the frame of each adaptive anchor, and
`phase_windows/<phase>` (N,2) int64, the frames each phase spans (file attribute `motion_anchors`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deflate
import h5py
import numpy as np

from pipeline.errors import MerError
from pipeline.io.hdf5 import (
    CacheWriter,
    array_sha256,
    frames_sha256,
    open_cache,
    read_dataset,
    string_list_attr,
    write_dataset,
    write_file_attrs,
)

DYNAMIC_IMAGES_SCHEMA = "mer.dynamic_images"
OPTIONAL_GROUPS = ("jitter", "motion_anchors", "phase_windows")
SAMPLE_FIELDS = ("sample_id", "dataset", "subject", "clip", "label", "onset", "apex", "offset", "apex_source")
_STRING_FIELDS = {"sample_id", "dataset", "subject", "clip", "apex_source"}
# One chunk per image, stored as a zlib stream: HDF5's deflate ("gzip") filter, which every HDF5
# reader inflates. The streams are made by libdeflate at its level 1 (`encode_image`), not by the
# filter (zlib): over 2x faster on DIs (motion on mid grey, sensor noise; zlib's compression was half
# the stage) and smaller (64 % of the raw bytes against 67 % for zlib's level 1; `bench_dynimg`
# prints both). libdeflate's output depends on its release alone (pinned in requirements.lock), not
# on the processor. The level recorded here is the filter's parameter, which readers ignore.
IMAGE_STORAGE = {"compression": "gzip", "compression_opts": 1}
_LIBDEFLATE_LEVEL = 1


def encode_image(image: np.ndarray) -> bytes:
    """The stored chunk of one uint8 image (a DI, or a jittered one): its zlib stream. Workers
    encode and the writer only copies the chunk (`DynamicImageWriter.add(..., encoded=,
    encoded_jitter=)`), and the writer encodes what it is handed unencoded the same way, so the
    file is the same whatever the number of workers."""
    pixels = memoryview(np.ascontiguousarray(image, dtype=np.uint8)).cast("B")
    return bytes(deflate.zlib_compress(pixels, _LIBDEFLATE_LEVEL))


@dataclass
class DynamicImageSet:
    """The whole DI cache in memory: it is small (CASME II is about 250 clips x 3 images)."""

    samples: dict[str, np.ndarray]  # SAMPLE_FIELDS -> (N,)
    images: dict[str, np.ndarray]  # phase name -> (N,H,W,3) uint8
    label_names: list[str]
    attrs: dict[str, Any]
    # "group/name" -> array of the optional groups (OPTIONAL_GROUPS): jitter/<phase> (N,K,H,W,3),
    # jitter/<phase>_frames (N,K,2), motion_anchors/<name> (N,), phase_windows/<phase> (N,2)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def jitter(self, phase: str) -> np.ndarray | None:
        """The (N,K,H,W,3) jittered DIs of `phase`, None when the cache holds none."""
        return self.extra.get(f"jitter/{phase}")

    def __len__(self) -> int:
        return len(self.samples["sample_id"])

    @property
    def phases(self) -> list[str]:
        return list(self.images)


class DynamicImageWriter(CacheWriter):
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
        jitter: Mapping[str, int] | None = None,
    ):
        self._n, self._phases, self._count = n, list(phases), 0
        self._jitter = {phase: k for phase, k in (jitter or {}).items() if k}  # phase -> K
        self._params, self._label_names = dict(params), list(label_names)
        self._handle = h5py.File(path, "w", track_order=False)
        self._group = self._handle.create_group("images")
        self._datasets: dict[str, h5py.Dataset] = {}  # kept: an h5py lookup costs ~70 us, as much as a write
        self._jitter_datasets: dict[str, h5py.Dataset] = {}
        self._digests = {phase: hashlib.sha256() for phase in self._phases}
        self._jitter_digests = {phase: hashlib.sha256() for phase in self._jitter}
        if image_shape is not None:
            for phase in self._phases:
                self._datasets[phase] = self._create(self._group, phase, image_shape)

    def _create(self, group: h5py.Group, name: str, shape: tuple[int, ...], draws: int | None = None) -> h5py.Dataset:
        """The dataset of `n` samples of one (H, W, 3) image each, or with `draws` of that many
        (jitter); one image per chunk."""
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"{group.name.lstrip('/')}/{name}: an image of shape {shape}, expected (H, W, 3)")
        per_sample = shape if draws is None else (draws, *shape)
        return group.create_dataset(
            name,
            shape=(self._n, *per_sample),
            dtype=np.uint8,
            chunks=(1,) * (len(per_sample) - 2) + shape,
            track_times=False,
            **IMAGE_STORAGE,
        )

    def add(
        self,
        images: Mapping[str, np.ndarray],
        jitter: Mapping[str, Any] | None = None,
        encoded: Mapping[str, bytes] | None = None,
        encoded_jitter: Mapping[str, Sequence[bytes]] | None = None,
    ) -> None:
        """The next sample's DIs, one (H,W,3) uint8 image per phase, and with jitter its K jittered
        DIs per jittered phase. `encoded` / `encoded_jitter`: the same images already compressed
        (`encode_image`), written as they are."""
        if self._count >= self._n:
            raise ValueError(f"more than the {self._n} samples this cache was created for")
        for phase in self._phases:
            image = np.ascontiguousarray(images[phase], dtype=np.uint8)
            if phase not in self._datasets:
                self._datasets[phase] = self._create(self._group, phase, image.shape)
            dataset = self._datasets[phase]
            if dataset.shape[1:] != image.shape:
                raise ValueError(f"images/{phase}: an image of shape {image.shape}, expected {dataset.shape[1:]}")
            chunk = encode_image(image) if encoded is None else encoded[phase]
            dataset.id.write_direct_chunk((self._count, 0, 0, 0), chunk)
            self._digests[phase].update(memoryview(image).cast("B"))
        for phase, k in self._jitter.items():
            stack = np.ascontiguousarray(np.stack(list((jitter or {})[phase])), dtype=np.uint8)
            if stack.shape[0] != k:
                raise ValueError(f"jitter/{phase}: {stack.shape[0]} images, expected {k}")
            if phase not in self._jitter_datasets:
                self._jitter_datasets[phase] = self._create(
                    self._handle.require_group("jitter"), phase, stack.shape[1:], draws=k
                )
            dataset = self._jitter_datasets[phase]
            chunks = [encode_image(image) for image in stack] if encoded_jitter is None else encoded_jitter[phase]
            for draw, chunk in enumerate(chunks):  # a chunk holds one image, as in images/
                dataset.id.write_direct_chunk((self._count, draw, 0, 0, 0), chunk)
            self._jitter_digests[phase].update(memoryview(stack).cast("B"))
        self._count += 1

    def finish(
        self,
        samples: Mapping[str, Iterable[Any]],
        extra_attrs: Mapping[str, Any] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the per-sample columns (SAMPLE_FIELDS), the images' checksums, the file attributes and
        `arrays` ("group/name" -> array, each with its checksum: the optional groups' vectors).

        `params` replaces the params given at creation: the file attributes are written last, so the
        settings recorded can be the ones that turned out to shape the images (dynimg leaves out a
        `min_phase_frames` that widened no phase, and the file stays byte-identical)."""
        if self._count != self._n:
            raise ValueError(f"{self._count} samples were added to a cache created for {self._n}")
        columns = {name: np.asarray(list(samples[name])) for name in SAMPLE_FIELDS}
        for name, column in columns.items():
            if len(column) != self._n:
                raise ValueError(f"sample field {name} has {len(column)} entries, expected {self._n}")
            write_dataset(self._handle, name, column.astype(object if name in _STRING_FIELDS else np.int64))
        for phase, digest in self._digests.items():
            self._group[phase].attrs["sha256"] = digest.hexdigest()
        for phase, digest in self._jitter_digests.items():
            self._handle["jitter"][phase].attrs["sha256"] = digest.hexdigest()
        for name, array in (arrays or {}).items():
            group, _, leaf = name.rpartition("/")
            write_dataset(self._handle.require_group(group) if group else self._handle, leaf, np.asarray(array))
        write_file_attrs(
            self._handle,
            DYNAMIC_IMAGES_SCHEMA,
            self._params if params is None else params,
            {"label_names": self._label_names, "phases": self._phases},
        )
        for key, value in (extra_attrs or {}).items():
            self._handle.attrs[key] = value


def read_dynamic_images(path: str | Path) -> DynamicImageSet:
    """The whole DI cache, every dataset checked against its stored sha256 as it is read.

    The bytes read are hashed once, in memory (no second read); a dataset whose digest differs
    from its stored one stops the reader with a MerError naming the file, the dataset and, where
    the damage can be located (a per-sample value that disagrees with the rest of its row), the clip.
    """
    damaged: list[str] = []
    with open_cache(path, DYNAMIC_IMAGES_SCHEMA) as handle:
        phases = string_list_attr(handle.attrs, "phases", [])
        missing = [name for name in SAMPLE_FIELDS if name not in handle] + [
            f"images/{p}" for p in phases if f"images/{p}" not in handle
        ]
        if missing or "label_names" not in handle.attrs:
            missing += [] if "label_names" in handle.attrs else ["label_names attribute"]
            raise MerError(
                f"{path} lacks {', '.join(missing)}: it is damaged or incomplete; regenerate it with `mer dynimg`"
            )
        samples = {}
        for name in SAMPLE_FIELDS:
            samples[name] = read_dataset(handle[name])
            if handle[name].attrs.get("sha256") != array_sha256(samples[name]):
                damaged.append(name)
        images = {}
        for phase in phases:
            dataset = handle["images"][phase]
            images[phase] = dataset[()]
            if dataset.attrs.get("sha256") != frames_sha256(images[phase]):
                damaged.append(f"images/{phase}")
        extra = {}
        for group in OPTIONAL_GROUPS:
            for name, dataset in handle[group].items() if group in handle else ():
                extra[f"{group}/{name}"] = dataset[()]
                if dataset.attrs.get("sha256") != array_sha256(extra[f"{group}/{name}"]):
                    damaged.append(f"{group}/{name}")
        attrs = {key: handle.attrs[key] for key in handle.attrs}
    label_names = string_list_attr(attrs, "label_names")
    if damaged:
        where = _locate_damage(samples, label_names)
        raise MerError(
            f"{path}: dataset(s) {', '.join(damaged)} do not match their stored sha256: the cache is damaged"
            + (f" ({where})" if where else "")
            + f"; regenerate it with `mer dynimg` (`mer cache verify {path}` lists every damaged dataset)"
        )
    return DynamicImageSet(samples=samples, images=images, label_names=label_names, attrs=attrs, extra=extra)


def _locate_damage(samples: Mapping[str, np.ndarray], label_names: list[str]) -> str:
    """The rows whose per-sample values contradict each other (a label out of range, onset > apex,
    a sample_id that does not start with dataset/subject/clip), as text; empty when none does."""
    rows = []
    for i in range(len(samples["sample_id"])):
        d, s, c = (str(samples[k][i]) for k in ("dataset", "subject", "clip"))
        if not (
            0 <= int(samples["label"][i]) < len(label_names)
            and int(samples["onset"][i]) <= int(samples["apex"][i]) <= int(samples["offset"][i])
            and str(samples["sample_id"][i]).startswith(f"{d}/{s}/{c}")
        ):
            rows.append(f"row {i}, clip {s}/{c}")
    if not rows:
        return ""
    return "at " + "; ".join(rows[:5]) + (f" and {len(rows) - 5} more rows" if len(rows) > 5 else "")


def dynamic_image_structure_problems(handle: h5py.File) -> list[str]:
    """Missing datasets and inconsistent shapes, one message per problem (checksums aside)."""
    problems = []
    n = handle["sample_id"].shape[0] if "sample_id" in handle else -1
    for name in SAMPLE_FIELDS:
        if name not in handle:
            problems.append(f"missing dataset {name}")
        elif handle[name].shape != (n,):
            problems.append(f"{name} has shape {handle[name].shape}, expected ({n},)")
    for phase in string_list_attr(handle.attrs, "phases", []):
        if f"images/{phase}" not in handle:
            problems.append(f"missing dataset images/{phase}")
        elif handle["images"][phase].shape[0] != n or handle["images"][phase].shape[-1] != 3:
            problems.append(f"images/{phase} has shape {handle['images'][phase].shape}, expected ({n}, H, W, 3)")
    for group in OPTIONAL_GROUPS:
        for name, dataset in handle[group].items() if group in handle else ():
            if dataset.shape[:1] != (n,):
                problems.append(f"{group}/{name} has shape {dataset.shape}, expected {n} rows (one per sample)")
    return problems
