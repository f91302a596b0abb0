"""Motion profiles of a clip and the apex estimated from them (peak motion relative to the onset).

Used by annotate (a missing apex in the coding sheet, from the raw frames) and by dynimg (an apex
estimated on the aligned frames). Pure functions of frame arrays, plus one reader that decodes a
clip's frames small and grey, which is all the estimate needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import MerError
from pipeline.imaging import REDUCTIONS, decode_frame


def motion_profile(frames: np.ndarray, onset_index: int = 0) -> np.ndarray:
    """Mean absolute difference of each frame from frame `onset_index`, for frames from there on."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(f"expected frames of shape (T,H,W) or (T,H,W,C) with T >= 1, got {frames.shape}")
    if not 0 <= onset_index < len(frames):
        raise ValueError(f"onset_index {onset_index} is outside the {len(frames)} frames")
    reference = frames[onset_index].astype(np.float32)
    if reference.ndim == 3:
        reference = reference.mean(axis=2)
    profile = np.empty(len(frames) - onset_index, np.float64)
    for i, frame in enumerate(frames[onset_index:]):  # one frame at a time: no (T,H,W) float copy
        frame = frame.astype(np.float32)
        if frame.ndim == 3:
            frame = frame.mean(axis=2)
        profile[i] = float(np.abs(frame - reference).mean())
    return profile


def _running(profile: np.ndarray, window: int, reduce) -> np.ndarray:
    """Centred running `reduce` (np.median, np.mean) over `window` frames, edges padded."""
    half = window // 2
    padded = np.pad(profile, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return reduce(windows, axis=1)


def estimate_apex(frames: np.ndarray, onset_index: int = 0, smooth: int = 5) -> int:
    """Index (into `frames`) of the frame of peak motion relative to the onset frame.

    Motion is the mean absolute grey-level difference to frame `onset_index`. It is smoothed
    over `smooth` frames (25 ms at 200 fps): a running median first, so that one or two odd
    frames (a corrupt or duplicated frame, a blink of the lights) cannot win, then a running
    mean; the first maximum is returned. Pure: works on any (T,H,W) or (T,H,W,C) array, raw
    frames as well as aligned ones.
    """
    profile = motion_profile(frames, onset_index)
    window = max(1, min(int(smooth), len(profile)))
    if window > 2:
        profile = _running(_running(profile, window, np.median), window, np.mean)
    return onset_index + int(np.argmax(profile))


def frame_motion(frames: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level difference of each frame to the one before it (0 for the first)."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or len(frames) == 0:
        raise ValueError(f"expected frames of shape (T,H,W) or (T,H,W,C) with T >= 1, got {frames.shape}")
    motion = np.zeros(len(frames), np.float64)
    previous = None
    for i, frame in enumerate(frames):
        frame = frame.astype(np.float32)
        if frame.ndim == 3:
            frame = frame.mean(axis=2)
        if previous is not None:
            motion[i] = float(np.abs(frame - previous).mean())
        previous = frame
    return motion


def cumulative_motion_index(motion: np.ndarray, fraction: float) -> int:
    """First index by which the cumulative `motion` reaches `fraction` of its total (the middle
    index when the clip does not move at all)."""
    total = float(np.sum(motion))
    if total <= 0:
        return (len(motion) - 1) // 2
    cumulative = np.cumsum(motion) / total
    return int(np.searchsorted(cumulative, fraction - 1e-12))


def motion_anchors(frames: np.ndarray, names: Sequence[str], smooth: int = 5) -> dict[str, int]:
    """Indices (into `frames`, the clip onset..offset) of the adaptive phase anchors `names`:
    `peak` is `estimate_apex` (peak motion relative to the first frame), `mNN` the first frame by
    which the cumulative frame-to-frame motion (`frame_motion`) reaches NN % of the clip's total."""
    anchors: dict[str, int] = {}
    motion = None
    for name in names:
        if name == "peak":
            anchors[name] = estimate_apex(frames, 0, smooth)
        elif len(name) > 1 and name[0] == "m" and name[1:].isdigit() and 1 <= int(name[1:]) <= 99:
            motion = frame_motion(frames) if motion is None else motion
            anchors[name] = cumulative_motion_index(motion, int(name[1:]) / 100)
        else:
            raise ValueError(f"unknown motion anchor {name!r}: expected peak or m1..m99")
    return anchors


def load_motion_frames(paths: Sequence[str | Path], min_side: int = 96) -> np.ndarray:
    """(T,h,w) uint8 grayscale frames decoded at reduced size (JPEG DCT scaling, fast).

    The reduction is the largest of 1/2/4/8 that keeps the shorter side at least `min_side`
    pixels: 640x480 CASME II frames are read at 160x120, 2040x1088 SAMM frames at 255x136.
    """
    if not paths:
        raise ValueError("no frames to read")
    first = decode_frame(paths[0], grayscale=True)
    factor = max([f for f in REDUCTIONS if min(first.shape) // f >= min_side] or [1])
    frames = []
    for path in paths:
        image = decode_frame(path, grayscale=True, reduction=factor)
        if frames and image.shape != frames[0].shape:
            raise MerError(f"{path} is {image.shape[1]}x{image.shape[0]}, unlike the clip's other frames")
        frames.append(image)
    return np.stack(frames)
