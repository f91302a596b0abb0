"""Face alignment: one similarity transform per clip, from dlib landmarks on a reference frame.

The same transform is applied to every frame of a clip: aligning each frame separately adds
landmark jitter that looks exactly like the micro-motion the later stages try to capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .cache import AlignedClip
from .frames import ClipFolder, read_frame
from .landmarks import detect_faces, eye_centres, landmarks_in_box


@dataclass(frozen=True)
class AlignSettings:
    size: int = 224  # square output crop
    eye_distance: float = 0.38  # inter-ocular distance / crop width
    eye_height: float = 0.36  # eye line / crop height
    detect_max_side: int = 640  # larger frames are downscaled before detection
    upsample: int = 1  # extra dlib upsampling passes tried when the first pass finds nothing
    reference_candidates: int = 5  # frames tried, from the first, until a face is found

    @classmethod
    def from_params(cls, params: dict) -> "AlignSettings":
        known = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        settings = cls(**known)
        if settings.size < 16 or not 0 < settings.eye_distance < 1 or not 0 < settings.eye_height < 1:
            raise ValueError(f"align params out of range: {known}")
        return settings


class AlignmentFailure(Exception):
    """One clip could not be aligned; the message names the file and the reason."""


def similarity_transform(landmarks: np.ndarray, settings: AlignSettings) -> np.ndarray:
    """2x3 matrix that levels the eyes, scales them to a fixed distance and centres them."""
    right, left = eye_centres(landmarks)
    dx, dy = left - right
    distance = float(np.hypot(dx, dy))
    if distance < 1e-3:
        raise AlignmentFailure("degenerate landmarks (eyes coincide)")
    scale = settings.eye_distance * settings.size / distance
    angle = np.arctan2(dy, dx)
    cos, sin = scale * np.cos(-angle), scale * np.sin(-angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    centre = (right + left) / 2.0
    target = np.array([settings.size / 2.0, settings.eye_height * settings.size])
    return np.hstack([rotation, (target - rotation @ centre)[:, None]])


def locate_landmarks(image: np.ndarray, settings: AlignSettings) -> np.ndarray | None:
    """Landmarks of the most confident face; detection runs on a downscaled copy of large frames."""
    height, width = image.shape[:2]
    factor = min(1.0, settings.detect_max_side / max(height, width))
    small = image if factor == 1.0 else cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    for upsample in range(settings.upsample + 1):
        faces = detect_faces(small, upsample)
        if faces:
            box = faces[0][1]
            if factor != 1.0:
                import dlib  # the box is mapped back so landmarks use full-resolution detail

                box = dlib.rectangle(*(int(round(v / factor)) for v in (box.left(), box.top(), box.right(), box.bottom())))
            return landmarks_in_box(image, box)
    return None


def align_clip(folder: ClipFolder, settings: AlignSettings) -> AlignedClip:
    """Read, detect on the first frame that shows a face, warp every frame with one transform."""
    if not folder.frames:
        raise AlignmentFailure(f"{folder.path}: clip folder holds no image frames")
    frames = []
    for _, path in folder.frames:
        try:
            frames.append(read_frame(path))
        except Exception as exc:  # MerError from the decoder, or OS errors
            raise AlignmentFailure(str(exc)) from exc
    landmarks, reference = None, -1
    for index in range(min(settings.reference_candidates, len(frames))):
        landmarks = locate_landmarks(frames[index], settings)
        if landmarks is not None:
            reference = index
            break
    if landmarks is None:
        tried = min(settings.reference_candidates, len(frames))
        raise AlignmentFailure(f"{folder.path}: no face found in the first {tried} frame(s)")
    affine = similarity_transform(landmarks, settings)
    size = (settings.size, settings.size)
    aligned = np.stack(
        [cv2.warpAffine(frame, affine, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for frame in frames]
    )
    return AlignedClip(
        subject=folder.subject,
        clip=folder.clip,
        frames=aligned,
        frame_numbers=np.array(folder.frame_numbers, dtype=np.int64),
        landmarks=landmarks,
        affine=affine,
        attrs={
            "source": f"{folder.path.parent.name}/{folder.path.name}",  # relative: caches move
            "reference_frame": int(folder.frame_numbers[reference]),
            "source_size": [int(v) for v in frames[0].shape[1::-1]],
        },
    )


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]
