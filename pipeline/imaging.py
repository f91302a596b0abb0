"""The one frame decoder: JPEG and other image files to uint8 arrays, damage reported per file.

OpenCV decodes truncated JPEGs without complaint, so the start- and end-of-image markers are
checked before decoding. `reduction` 2, 4 or 8 decodes at reduced size inside the JPEG decoder
(in the DCT domain): align uses it when the crop is smaller anyway, motion estimation always.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import MerError

JPEG_SUFFIXES = {".jpg", ".jpeg"}
REDUCTIONS = (1, 2, 4, 8)  # the scale factors the JPEG decoder can apply while decoding


class FrameError(MerError):
    """A frame (or clip folder) that cannot be used: `file` is the path concerned, `reason` says why."""

    def __init__(self, reason: str, file: str | Path | None = None):
        self.reason = reason
        self.file = str(file) if file is not None else ""
        super().__init__(f"{self.file}: {reason}" if self.file else reason)


def _file_bytes(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, np.uint8)
    except PermissionError:
        raise FrameError("cannot read file: permission denied", path) from None
    except OSError as exc:
        raise FrameError(f"cannot read file: {exc.strerror or exc}", path) from None
    if data.size == 0:
        raise FrameError("cannot decode image: empty file", path)
    if path.suffix.lower() in JPEG_SUFFIXES:
        if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
            raise FrameError("cannot decode image: not a JPEG file (no start-of-image marker)", path)
        if b"\xff\xd9" not in data[-64:].tobytes():
            raise FrameError("cannot decode image: truncated JPEG (no end-of-image marker)", path)
    return data


_READ_FLAGS = {
    (True, 1): cv2.IMREAD_GRAYSCALE,
    (True, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (True, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (True, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
    (False, 1): cv2.IMREAD_COLOR,
    (False, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (False, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (False, 8): cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_frame(path: str | Path, grayscale: bool, reduction: int = 1, rgb: bool = True) -> np.ndarray:
    """One frame: (H, W) uint8 when `grayscale`, else (H, W, 3) uint8, RGB (or BGR with rgb=False).

    `reduction` 2, 4 or 8 decodes at 1/2, 1/4, 1/8 size (JPEG: in the DCT domain, several times
    faster than a full decode, and low-pass filtered). Damage raises FrameError.
    """
    path = Path(path)
    image = cv2.imdecode(_file_bytes(path), _READ_FLAGS[(grayscale, reduction)])
    if image is None:
        raise FrameError("cannot decode image (corrupt, truncated or not an image)", path)
    if rgb and not grayscale:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return image


def is_grayscale(path: str | Path) -> bool:
    """True for single-channel files and for colour files whose three channels are equal.

    JPEGs are probed at 1/8 size (DC coefficients only: a fraction of a millisecond).
    """
    path = Path(path)
    jpeg = path.suffix.lower() in JPEG_SUFFIXES
    image = cv2.imdecode(_file_bytes(path), cv2.IMREAD_REDUCED_COLOR_8 if jpeg else cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError("cannot decode image (corrupt, truncated or not an image)", path)
    if image.ndim == 2:
        return True
    if image.ndim == 3 and image.shape[2] == 3:
        return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
    return False
