"""dlib face detection and 68-point landmarks.

The 68-point model ships in the `face-recognition-models` package. That package imports
pkg_resources on import, which new setuptools no longer provides, so its models/ folder is located
through importlib's module spec instead of importing it. The model is trained on iBUG 300-W, whose
terms are non-commercial (see README).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import dlib
import numpy as np

from pipeline.errors import MerError

# dlib's 68-point scheme: indices of the eye contours, used to level and scale faces.
RIGHT_EYE = slice(36, 42)  # the subject's right eye, on the left of the image
LEFT_EYE = slice(42, 48)


def model_folder() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MerError("the dlib landmark model is missing: pip install face-recognition-models")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=1)
def load_models() -> tuple[dlib.fhog_object_detector, dlib.shape_predictor]:
    """The HOG face detector and the 68-point predictor, loaded once per process."""
    path = model_folder() / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise MerError(f"dlib landmark model not found at {path}; reinstall face-recognition-models")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def detect_faces(image: np.ndarray, upsample: int = 0) -> list[tuple[float, dlib.rectangle]]:
    """Face boxes in an RGB or grayscale uint8 image, most confident first."""
    detector, _ = load_models()
    boxes, scores, _ = detector.run(np.ascontiguousarray(image), upsample, 0.0)
    return sorted(zip(scores, boxes), key=lambda item: -item[0])


def landmarks_in_box(image: np.ndarray, box: dlib.rectangle) -> np.ndarray:
    _, predictor = load_models()
    shape = predictor(np.ascontiguousarray(image), box)
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float32)


def detect_landmarks(image: np.ndarray, upsample: int = 0) -> np.ndarray | None:
    """68 (x, y) landmarks of the most confident face, or None when no face is found."""
    faces = detect_faces(image, upsample)
    if not faces:
        return None
    return landmarks_in_box(image, faces[0][1])


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right eye, left eye) centres: the subject's right eye is on the image's left."""
    return landmarks[RIGHT_EYE].mean(axis=0), landmarks[LEFT_EYE].mean(axis=0)
