"""A clip's frames: the subject's face warped by its facial-action pattern over time, with sensor noise."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from pipeline.demo.face import render_subject, rotation
from pipeline.demo.looks import SubjectLook
from pipeline.demo.patterns import PATTERN_NAMES, pattern
from pipeline.demo.plan import ClipPlan, derived_rng


def face_scale(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(face width, inter-ocular distance, roll angle in radians) of 68 landmarks."""
    right, left = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    dx, dy = left - right
    return float(np.linalg.norm(landmarks[16] - landmarks[0])), float(math.hypot(dx, dy)), math.atan2(dy, dx)


def displacement_field(
    landmarks: np.ndarray, displacements: np.ndarray, sigma: float, size: tuple[int, int], step: int = 4
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Dense (h, w, 2) float32 displacement over the face's region of interest, and that region.

    Gaussian-weighted landmark displacements, normalised where landmarks crowd together (so the
    field at a landmark is about its own and its neighbours' displacement) and fading to zero a few
    sigma away. Evaluated on a coarse grid and interpolated: the field is smooth at that scale.
    Returns ((x0, y0, x1, y1), field) with the field covering frame pixels x0..x1-1, y0..y1-1.
    """
    width, height = size
    margin = 3 * sigma + 2
    x0, y0 = (np.floor(landmarks.min(axis=0) - margin)).astype(int)
    x1, y1 = (np.ceil(landmarks.max(axis=0) + margin)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    w, h = x1 - x0, y1 - y0
    cw, ch = max(2, -(-w // step)), max(2, -(-h // step))
    # Coarse sample centres, placed as cv2.resize maps them back onto the fine grid.
    xs = x0 + (np.arange(cw) + 0.5) * (w / cw) - 0.5
    ys = y0 + (np.arange(ch) + 0.5) * (h / ch) - 0.5
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    d2 = ((points[:, None, :] - landmarks[None, :, :].astype(np.float64)) ** 2).sum(-1)
    weights = np.exp(-d2 / (2 * sigma**2))
    coarse = (weights @ displacements.astype(np.float64)) / np.maximum(1.0, weights.sum(1, keepdims=True))
    coarse = coarse.reshape(ch, cw, 2).astype(np.float32)
    return (int(x0), int(y0), int(x1), int(y1)), cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def intensity_curve(n_frames: int, apex_index: int, residual: float = 0.0) -> np.ndarray:
    """(n,) expression intensity: 0 at the onset, 1 at the apex, `residual` at the offset.

    Raised-cosine rise and decay, so the motion starts and stops smoothly.
    """
    k = np.arange(n_frames, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(math.pi * np.clip(k / max(apex_index, 1), 0, 1))
    decay_length = max(n_frames - 1 - apex_index, 1)
    decay = residual + (1 - residual) * (0.5 + 0.5 * np.cos(math.pi * np.clip((k - apex_index) / decay_length, 0, 1)))
    return np.where(k <= apex_index, rise, decay)


# Peak landmark displacement, in pixels for a face 265 px wide (a 640x480 CASME II frame).
AMPLITUDE_RANGE = (1.5, 3.0)
REFERENCE_FACE_WIDTH = 265.0
SUBJECT_STYLE = 0.5  # share of each clip's motion that is the subject's own style, the same for all classes
CLIP_JITTER = 0.25  # per-landmark variation of a clip's motion, relative
_NOISE_PAD = 32  # a frame's noise window lies up to this many pixels into the subject's noise field


@functools.lru_cache(maxsize=64)
def subject_style(seed: int, dataset: str, subject: str) -> np.ndarray:
    """(68, 2) a subject's idiosyncratic motion: a random mix of all patterns, largest of length 1.

    People differ in how they move their faces; mixed into every clip of the subject, it makes
    leave-one-subject-out generalization a real test instead of matching one template per class.
    """
    weights = derived_rng(seed, dataset, subject, "style").dirichlet(np.full(len(PATTERN_NAMES), 0.5))
    style = sum(w * pattern(name).astype(np.float64) for w, name in zip(weights, PATTERN_NAMES))
    return style / np.linalg.norm(style, axis=1).max()


def clip_displacements(
    clip: ClipPlan, landmarks: np.ndarray, rng: np.random.Generator, style: np.ndarray
) -> np.ndarray:
    """(68, 2) peak landmark displacements of one clip, in frame pixels."""
    face_width, _, roll = face_scale(landmarks)
    moves = (1 - SUBJECT_STYLE) * pattern(clip.pattern).astype(np.float64) + SUBJECT_STYLE * style
    moves = moves * (1 + CLIP_JITTER * rng.standard_normal(moves.shape))  # per-clip variation of the shape
    amplitude = rng.uniform(*AMPLITUDE_RANGE) * face_width / REFERENCE_FACE_WIDTH
    return moves @ rotation(math.degrees(roll)).T * amplitude


@functools.lru_cache(maxsize=4)
def _noise_pool(seed: int, dataset: str, subject: str, look: SubjectLook) -> tuple[np.ndarray, np.ndarray]:
    """A subject's sensor noise, padded, as its positive and negative parts (uint8).

    Frames read it at random offsets: windows at different offsets are independent, and drawing
    one field per subject instead of one per frame saves most of the cost. Keeping the two parts
    lets two saturating uint8 operations add the noise exactly.
    """
    rng = derived_rng(seed, dataset, subject, "noise")
    width, height = look.size
    shape = (height + _NOISE_PAD, width + _NOISE_PAD) + (() if look.gray else (3,))
    noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * look.noise)
    positive, negative = np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)
    positive.setflags(write=False)
    negative.setflags(write=False)
    return positive, negative


def render_clip(clip: ClipPlan, seed: int) -> np.ndarray:
    """All frames of one clip, (T, H, W, 3) BGR or (T, H, W) grayscale uint8, noise included."""
    rng = derived_rng(seed, clip.dataset, clip.subject, clip.clip)
    base, landmarks = render_subject(clip.look)
    height, width = base.shape[:2]
    displacements = clip_displacements(clip, landmarks, rng, subject_style(seed, clip.dataset, clip.subject))
    _, eye_distance, _ = face_scale(landmarks)
    (x0, y0, x1, y1), flow = displacement_field(landmarks, displacements, 0.12 * eye_distance, (width, height))
    curve = intensity_curve(clip.n_frames, clip.apex_index, float(rng.uniform(0.0, 0.15)))
    grid_x, grid_y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))

    positive, negative = _noise_pool(seed, clip.dataset, clip.subject, clip.look)

    def noisy(image: np.ndarray, oy: int, ox: int, flip: bool) -> np.ndarray:
        h, w = image.shape[:2]
        up, down = (negative, positive) if flip else (positive, negative)  # the noise is symmetric
        out = cv2.add(image, up[oy : oy + h, ox : ox + w])
        return cv2.subtract(out, down[oy : oy + h, ox : ox + w], dst=out)

    frames = np.empty((clip.n_frames,) + base.shape, dtype=np.uint8)
    for k, level in enumerate(curve):
        oy, ox, flip = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, size=3))
        flip = bool(flip % 2)
        frames[k] = noisy(base, oy, ox, flip)
        if level > 0:
            # Content moves by +level * flow: each pixel samples the neutral face where it came from.
            map_x = grid_x - np.float32(level) * flow[..., 0]
            map_y = grid_y - np.float32(level) * flow[..., 1]
            moved = cv2.remap(base, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            frames[k, y0:y1, x0:x1] = noisy(moved, oy + y0, ox + x0, flip)
    return frames
