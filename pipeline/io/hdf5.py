"""What both HDF5 caches share: checksummed datasets, file attributes, opening and checksum checks.

Every dataset carries a sha256 attribute of its bytes so `mer cache verify` can detect damage.
The aligned frames, which every later stage reads whole, also carry an xxh3-128 of their bytes
(`FAST_CHECKSUM`): a non-cryptographic hash at memory speed (~28 GB/s here, sha256 1.8 GB/s), so
that checking the frames as they are read costs little; the sha256 stays for provenance.
Nothing here records times (`track_times=False`), so the same inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np
import xxhash

from pipeline import __version__
from pipeline.errors import MerError

SCHEMA_VERSION = 1
_STRING = h5py.string_dtype("utf-8")


def array_sha256(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    if data.dtype.kind in "OUS":
        return hashlib.sha256("\x1f".join(map(str, data.ravel())).encode()).hexdigest()
    return hashlib.sha256(data.tobytes()).hexdigest()


def frames_sha256(frames: np.ndarray) -> str:
    """array_sha256 of a uint8 frame stack, hashed in place (no copy of a C-contiguous stack)."""
    data = np.ascontiguousarray(frames, dtype=np.uint8)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


FAST_CHECKSUM = "xxh3_128"  # attribute name and algorithm of the read-time checksum of aligned frames


def frames_xxh3(frames: np.ndarray) -> str:
    """The FAST_CHECKSUM of a uint8 frame stack, hashed in place."""
    data = np.ascontiguousarray(frames, dtype=np.uint8)
    return xxhash.xxh3_128_hexdigest(memoryview(data).cast("B"))


def write_dataset(group: h5py.Group, name: str, data: np.ndarray, **kwargs: Any) -> h5py.Dataset:
    """A dataset with the sha256 of its bytes; string arrays are stored as UTF-8 strings."""
    if data.dtype.kind in "OU":
        dataset = group.create_dataset(name, data=np.asarray(data, dtype=object), dtype=_STRING, track_times=False)
    else:
        dataset = group.create_dataset(name, data=data, track_times=False, **kwargs)
    dataset.attrs["sha256"] = array_sha256(np.asarray(data))
    return dataset


def read_dataset(dataset: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(dataset.dtype) is not None:
        return dataset.asstr()[()]
    return dataset[()]


def write_file_attrs(handle: h5py.File, schema: str, params: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Schema, version, tool version, params (nested: JSON) and `extra`: strings and numbers as they
    are, a list of strings as an array of UTF-8 strings (plain h5py reads it as a list of str)."""
    handle.attrs["schema"] = schema
    handle.attrs["schema_version"] = SCHEMA_VERSION
    handle.attrs["tool_version"] = __version__
    handle.attrs["params"] = json.dumps(params, sort_keys=True)
    for key, value in extra.items():
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            handle.attrs.create(key, np.array(list(value), dtype=object), dtype=_STRING)
        else:
            handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)


def string_list_attr(
    attrs: h5py.AttributeManager | Mapping[str, Any], key: str, default: list[str] | None = None
) -> list[str]:
    """A list-of-strings attribute: an array of strings, or a JSON list as caches before the array
    form stored it (both are read). `default` when absent (KeyError when None)."""
    if key not in attrs:
        if default is None:
            raise KeyError(key)
        return list(default)
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return [str(item) for item in json.loads(value)]
    return [item.decode() if isinstance(item, bytes) else str(item) for item in np.asarray(value).ravel()]


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


def checksum_problems(handle: h5py.File) -> list[str]:
    """One message per dataset whose stored sha256 is missing, unreadable or wrong."""
    problems: list[str] = []

    def check(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        stored = obj.attrs.get("sha256")
        if stored is None:
            problems.append(f"{name}: no stored checksum")
            return
        try:
            data = read_dataset(obj)
        except OSError as exc:
            problems.append(f"{name}: unreadable ({exc})")
            return
        if array_sha256(data) != stored:
            problems.append(f"{name}: checksum mismatch (data damaged)")
        elif FAST_CHECKSUM in obj.attrs and obj.attrs[FAST_CHECKSUM] != frames_xxh3(data):
            problems.append(f"{name}: {FAST_CHECKSUM} checksum damaged (the data match their sha256)")

    handle.visititems(check)
    return problems


class CacheWriter:
    """An HDF5 file open for writing, closed by `close()` or at the end of a `with` block."""

    _handle: h5py.File

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
