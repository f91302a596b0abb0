"""The aligned cache (schema "mer.aligned", see docs/architecture.md): its one writer and readers.

One group per clip, /<subject>/<clip>, holding frames (T,H,W,3) uint8, chunked one frame per
chunk; frame_numbers (T,); landmarks (68,2); affine (2,3); frame_affines (T,2,3) when each frame
has its own transform (align.redetect_every: a dataset, not an attribute, as HDF5 attributes stop
at 64 KB, about 1,365 frames); group attributes for the source folder and reference frame. File
attributes: schema, schema_version, params (JSON), tool_version, dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from pipeline.errors import MerError
from pipeline.io.hdf5 import (
    FAST_CHECKSUM,
    CacheWriter,
    array_sha256,
    frames_sha256,
    frames_xxh3,
    write_dataset,
    write_file_attrs,
)

ALIGNED_SCHEMA = "mer.aligned"
REQUIRED = ("frames", "frame_numbers", "landmarks", "affine")


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
    # sha256 of datasets already computed (by a worker, in parallel), by dataset name (and the
    # frames' FAST_CHECKSUM as frames_xxh3_128); the writer computes the others. Only for arrays
    # that are not modified afterwards.
    checksums: dict[str, str] = field(default_factory=dict)


class AlignedCacheWriter(CacheWriter):
    """Appends clips to an aligned cache; the caller owns atomic placement of the file."""

    def __init__(self, path: str | Path, dataset: str, params: Mapping[str, Any]):
        self._handle = h5py.File(path, "w", track_order=False)
        write_file_attrs(self._handle, ALIGNED_SCHEMA, params, {"dataset": dataset})

    def add(self, clip: AlignedClip) -> None:
        group = self._handle.require_group(clip.subject).create_group(clip.clip)
        frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
        # Uncompressed: LZF saved only ~10 % on aligned faces, cost more than decoding in the single
        # writer, and liblzf's uninitialised hash table made identical frames compress differently.
        # The frames' checksum usually comes from the worker (the writer is the serial part).
        digests = {
            "sha256": clip.checksums.get("frames") or frames_sha256(frames),
            FAST_CHECKSUM: clip.checksums.get(f"frames_{FAST_CHECKSUM}") or frames_xxh3(frames),
        }
        dataset = group.create_dataset(
            "frames", shape=frames.shape, dtype=np.uint8, chunks=(1, *frames.shape[1:]), track_times=False
        )
        # Each frame written as its stored chunk (no filter, no conversion): ~10 % less CPU in the
        # single writer than HDF5's own write path (which also places the chunks a few bytes apart).
        for index, frame in enumerate(frames):
            dataset.id.write_direct_chunk((index, 0, 0, 0), frame)
        for attribute, digest in digests.items():
            dataset.attrs[attribute] = digest
        write_dataset(group, "frame_numbers", np.asarray(clip.frame_numbers, dtype=np.int64))
        write_dataset(group, "landmarks", np.asarray(clip.landmarks, dtype=np.float32))
        write_dataset(group, "affine", np.asarray(clip.affine, dtype=np.float64))
        if clip.frame_affines is not None:
            write_dataset(group, "frame_affines", np.asarray(clip.frame_affines, dtype=np.float64))
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


def read_intact_clip(handle: h5py.File, subject: str, clip: str) -> AlignedClip | None:
    """The clip, or None when it is damaged (a read error or a stored checksum that does not match)."""
    try:
        aligned = read_aligned_clip(handle, subject, clip)
    except (OSError, KeyError, MerError):
        return None
    group = handle[subject][clip]
    names = REQUIRED + (("frame_affines",) if "frame_affines" in group else ())
    for name in names:
        if name == "frames" and FAST_CHECKSUM in group[name].attrs:  # as quick as the read
            if group[name].attrs[FAST_CHECKSUM] != frames_xxh3(aligned.frames):
                return None
        elif group[name].attrs.get("sha256") != array_sha256(getattr(aligned, name)):
            return None
    return aligned


class VerifiedFrames:
    """A clip's `frames` dataset read in slices, hashed as it is read, checked by `problem()`.

    Slices are read from the file as asked (block by block, for memory that stays flat); every
    frame is hashed exactly once, in order: frames skipped over by a slice (not used by any phase)
    are read and hashed in blocks of `block` frames, and `problem()` hashes the rest of the clip,
    then compares the digest with the checksum stored with the frames. Nothing is read twice for
    the check; a slice already hashed is returned without hashing it again.

    The check is the frames' FAST_CHECKSUM (xxh3-128, at memory speed: ~5 us per 224x224 frame,
    in the reading thread); caches written before it was stored are checked against their sha256
    (~80 us per frame; rerun align to get the fast check).
    """

    def __init__(self, handle: h5py.File, subject: str, clip: str, block: int = 32):
        # whole paths and each attribute read once: h5py spends ~70 us per lookup, as long as the
        # arithmetic on a short clip's frames
        self._dataset: h5py.Dataset = handle[f"{subject}/{clip}/frames"]
        self._where = f"{handle.filename}, clip {subject}/{clip}"
        self.sha256: str | None = self._dataset.attrs.get("sha256")  # the frames' provenance digest, as stored
        self._algorithm, self._stored = FAST_CHECKSUM, self._dataset.attrs.get(FAST_CHECKSUM)
        if self._stored is None:
            self._algorithm, self._stored = "sha256", self.sha256
        self._digest = xxhash.xxh3_128() if self._algorithm == FAST_CHECKSUM else hashlib.sha256()
        self._hashed = 0  # frames [0, _hashed) are in the digest
        self._block = block
        self.shape: tuple[int, ...] = self._dataset.shape
        numbers = handle[f"{subject}/{clip}/frame_numbers"]
        self.frame_numbers: np.ndarray = numbers[()]
        self._numbers_stored = numbers.attrs.get("sha256")

    def _hash(self, frames: np.ndarray) -> None:
        self._digest.update(memoryview(np.ascontiguousarray(frames, dtype=np.uint8)).cast("B"))

    def _advance(self, stop: int) -> None:
        while self._hashed < stop:
            end = min(self._hashed + self._block, stop)
            self._hash(self._dataset[self._hashed : end])
            self._hashed = end

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("VerifiedFrames reads slices of frames only")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("VerifiedFrames reads contiguous slices only")
        self._advance(start)
        frames = self._dataset[start:stop]
        if stop > self._hashed:
            self._hash(frames[self._hashed - start :])
            self._hashed = stop
        return frames

    def problem(self) -> str | None:
        """None when the frames and frame numbers match their stored checksums, else a message
        naming the cache file and the clip. Reads (and hashes) the frames not read yet."""
        if self._numbers_stored != array_sha256(self.frame_numbers):
            return f"{self._where}: frame_numbers do not match their stored sha256 (the aligned cache is damaged)"
        self._advance(self.shape[0])
        if self._stored != self._digest.hexdigest():
            return f"{self._where}: frames do not match their stored {self._algorithm} (the aligned cache is damaged)"
        return None


def aligned_structure_problems(handle: h5py.File) -> list[str]:
    """Missing datasets and inconsistent shapes, one message per problem (checksums aside)."""
    problems = []
    for subject, clip in aligned_clip_keys(handle):
        group = handle[subject][clip]
        for name in REQUIRED:
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
