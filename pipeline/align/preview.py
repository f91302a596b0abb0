"""`mer cache preview` of an aligned cache: per chosen clip its reference frame with the landmarks,
then its first, middle and last frames, one row per clip (the contact sheet of pipeline.align.montage).

Without a choice of clips, the first clip of each subject, spread over the subjects when there are
more than the rows drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.align.clip import transform_points
from pipeline.align.montage import save_montage
from pipeline.errors import MerError
from pipeline.io.aligned_cache import ALIGNED_SCHEMA, aligned_clip_keys
from pipeline.io.hdf5 import open_cache

DEFAULT_ROWS = 12  # most clips drawn when neither clips nor a count are given
_NO_POINTS = np.empty((0, 2))


def pick_aligned_clips(keys: Sequence[tuple[str, str]], count: int | None = None) -> list[tuple[str, str]]:
    """The first clip of each subject; `count` of them (default: every subject, at most DEFAULT_ROWS),
    spread evenly over the subjects."""
    first: dict[str, tuple[str, str]] = {}
    for subject, clip in keys:
        first.setdefault(subject, (subject, clip))
    picks = list(first.values())
    wanted = max(1, count if count is not None else DEFAULT_ROWS)
    if len(picks) > wanted:
        picks = [picks[int(i)] for i in np.linspace(0, len(picks) - 1, wanted).round()]
    elif count is not None and count > len(picks):  # more rows than subjects: further clips in order
        picks += [key for key in keys if key not in picks][: count - len(picks)]
    return sorted(picks)


def write_aligned_preview(
    cache: str | Path, out: str | Path, clips: Sequence[str] = (), count: int | None = None
) -> int:
    """Draw the `clips` (subject/clip) of an aligned cache, or `pick_aligned_clips`, into the PNG `out`;
    returns the number of clips drawn."""
    with open_cache(cache, ALIGNED_SCHEMA) as handle:
        keys = aligned_clip_keys(handle)
        if not keys:
            raise MerError(f"{cache} holds no clips")
        if clips:
            chosen = [tuple(c.strip("/").split("/", 1)) for c in clips]
            missing = [c for c, key in zip(clips, chosen) if key not in set(keys)]
            if missing:
                raise MerError(
                    f"{cache} holds no clip {', '.join(missing)}; give subject/clip, e.g. {'/'.join(keys[0])}"
                )
        else:
            chosen = pick_aligned_clips(keys, count)
        images, points, labels = [], [], []
        for subject, clip in chosen:
            group = handle[subject][clip]
            frames, numbers = group["frames"], group["frame_numbers"][()]
            last = frames.shape[0] - 1
            reference = min(max(int(group.attrs.get("reference_index", 0)), 0), last)
            landmarks = transform_points(np.asarray(group["landmarks"][()], np.float64), group["affine"][()])
            for role, index in (("", reference), ("first", 0), ("middle", last // 2), ("last", last)):
                images.append(frames[index])
                points.append(landmarks if not role else _NO_POINTS)
                labels.append(f"{subject}/{clip} #{numbers[index]}" if not role else f"{role} #{numbers[index]}")
    save_montage(out, images, points, labels, columns=4)
    return len(chosen)
