"""A subject's neutral frame: the bundled portrait cut out, placed, reshaped and re-lit, with its landmarks."""

from __future__ import annotations

import functools
import math
from importlib.resources import files

import cv2
import numpy as np

from pipeline.demo.looks import SubjectLook
from pipeline.demo.patterns import MIRROR

PORTRAIT_RESOURCE = files("pipeline") / "data" / "astronaut.jpg"

# Head-and-shoulders cut-out of the portrait, in its pixels: an ellipse around the hair and a
# polygon for the neck, helmet ring and suit; the flag and shuttle model are left out.
_HEAD_ELLIPSE = ((225, 94), (76, 80))
_BODY_POLYGON = [(175, 120), (275, 120), (300, 150), (318, 190), (335, 240), (365, 300), (430, 420), (512, 512),
                 (0, 512), (20, 420), (60, 300), (105, 230), (120, 175), (150, 150)]  # fmt: skip


@functools.lru_cache(maxsize=1)
def portrait() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled portrait (BGR uint8), its 68 landmarks, and the soft head mask (float32 0..1)."""
    from pipeline.align.landmarks import detect_landmarks

    image = cv2.imread(str(PORTRAIT_RESOURCE), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"bundled portrait missing: {PORTRAIT_RESOURCE}")
    landmarks = detect_landmarks(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if landmarks is None:
        raise RuntimeError("dlib finds no face in the bundled portrait")
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.ellipse(mask, _HEAD_ELLIPSE[0], _HEAD_ELLIPSE[1], 0, 0, 360, 255, -1)
    cv2.fillPoly(mask, [np.array(_BODY_POLYGON, dtype=np.int32)], 255)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 4.0)
    for array in (image, landmarks, soft):
        array.setflags(write=False)
    return image, landmarks.astype(np.float32), soft


def rotation(degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def _placement(look: SubjectLook, landmarks: np.ndarray) -> np.ndarray:
    """2x3 affine from portrait pixels to frame pixels (scale, aspect, mirror, rotation, shift)."""
    jaw = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    scale = look.face_width / jaw
    flip = -1.0 if look.mirror else 1.0
    linear = rotation(look.angle) @ np.diag([scale * look.aspect * flip, scale])
    centre = landmarks.mean(axis=0).astype(np.float64)
    return np.hstack([linear, (np.asarray(look.centre) - linear @ centre)[:, None]])


def _shape_warp(look: SubjectLook, points: np.ndarray) -> np.ndarray:
    """Gentle smooth displacement (frame pixels) at `points` (..., 2): a radial bulge and a long wave."""
    centre = np.asarray(look.centre)
    offset = points - centre
    reach = 0.7 * look.face_width
    falloff = np.exp(-(offset**2).sum(-1, keepdims=True) / (2 * reach**2))
    bulge = offset * np.asarray(look.bulge) * falloff
    amplitude, wavelength, direction, phase = look.wave
    along = np.array([math.cos(direction), math.sin(direction)])
    across = np.array([-math.sin(direction), math.cos(direction)])
    wave = amplitude * look.face_width * np.sin(2 * math.pi * (offset @ along) / (wavelength * look.face_width) + phase)
    return bulge + wave[..., None] * across


def _background(look: SubjectLook) -> np.ndarray:
    width, height = look.size
    first, second, direction = look.background
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xs - width / 2) * math.cos(direction) + (ys - height / 2) * math.sin(direction)) / (
        0.5 * math.hypot(width, height)
    )
    t = (np.clip(t, -1, 1) + 1) / 2
    first, second = np.asarray(first, np.float32), np.asarray(second, np.float32)
    return first + (second - first) * t[..., None]


@functools.lru_cache(maxsize=8)
def render_subject(look: SubjectLook) -> tuple[np.ndarray, np.ndarray]:
    """A subject's neutral frame (uint8, BGR (H,W,3) or grayscale (H,W)) and its 68 landmarks.

    The landmarks are the portrait's, carried through the same transform, and relabelled after
    mirroring so that they follow dlib's scheme in the new image.
    """
    photo, landmarks, mask = portrait()
    width, height = look.size
    affine = _placement(look, landmarks)
    inverse = cv2.invertAffineTransform(affine)

    # Backward map: frame pixel q samples the portrait at A^-1 (q + w(q)).
    grid = np.stack(np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)), axis=-1)
    source = (grid + _shape_warp(look, grid)) @ inverse[:, :2].T + inverse[:, 2]
    map_x, map_y = source[..., 0].astype(np.float32), source[..., 1].astype(np.float32)

    shaded = photo.astype(np.float32) / 255.0
    shaded = np.power(shaded, look.gamma)
    shaded = (shaded - 0.5) * look.contrast + 0.5 + look.brightness
    shaded = np.clip(shaded * np.asarray(look.tint, np.float32), 0, 1) * 255.0
    face = cv2.remap(shaded, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if look.blur > 0.3:
        face = cv2.GaussianBlur(face, (0, 0), look.blur)
    image = alpha[..., None] * face + (1 - alpha[..., None]) * _background(look)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if look.gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    # Forward landmarks: solve q + w(q) = A p by fixed-point iteration (w is small and smooth).
    source_points = landmarks[MIRROR] if look.mirror else landmarks
    target = source_points.astype(np.float64) @ affine[:, :2].T + affine[:, 2]
    points = target.copy()
    for _ in range(20):
        points = target - _shape_warp(look, points)
    image.setflags(write=False)
    points = points.astype(np.float32)
    points.setflags(write=False)
    return image, points


def face_found(image: np.ndarray, landmarks: np.ndarray) -> bool:
    """dlib's detector finds the face (at the size the align stage detects on, and at full size)."""
    from pipeline.align.landmarks import detect_faces

    centre = landmarks.mean(axis=0)
    height, width = image.shape[:2]
    candidates = [(image, 1.0)]
    factor = 640 / max(height, width)
    if factor < 1:
        candidates.append((cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA), factor))
    for picture, scale in candidates:
        faces = detect_faces(picture, 0)
        if not faces:
            return False
        box = faces[0][1]
        x, y = centre * scale
        if not (box.left() <= x <= box.right() and box.top() <= y <= box.bottom()):
            return False
    return True
