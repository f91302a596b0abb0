"""Input fingerprints recorded in the caches: what a clip or a DI cache was computed from.

A fingerprint is the sha256 of a sequence of parts. The aligned cache stores one per clip (so
`mer align --resume` reuses a clip only when its frames are unchanged); the DI cache stores one
for the whole file (train records it with every run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def sha256_of(parts: Iterable[str | bytes]) -> str:
    """sha256 of the parts in order (strings as UTF-8), as if concatenated."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()


def frame_files_fingerprint(frames: Sequence[tuple[int, Path]]) -> str:
    """Fingerprint of a clip's (frame number, file) pairs from their names and sizes: cheap, and
    independent of where the copy lives."""

    def line(number: int, path: Path) -> str:
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        return f"{number}\t{path.name}\t{size}\n"

    return sha256_of(line(number, path) for number, path in frames)


def dynamic_images_fingerprint(samples_file: str | Path, params: dict[str, Any], frame_checksums: Iterable[str]) -> str:
    """Fingerprint of everything the DIs depend on: the samples table's bytes, the recorded params,
    and the sha256 stored with each sample's aligned frames, in sample order."""
    return sha256_of([Path(samples_file).read_bytes(), json.dumps(params, sort_keys=True), *frame_checksums])
