"""The one frame decoder: JPEG and other image files to uint8 arrays, damage reported per file.

OpenCV decodes truncated JPEGs without complaint, so the start- and end-of-image markers are
checked before decoding. `reduction` 2, 4 or 8 decodes at reduced size inside the JPEG decoder
(in the DCT domain): align uses it when the crop is smaller anyway, motion estimation always.
"""

from __future__ import annotations

from collections.abc import Callable
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


def decode_frame(
    path: str | Path,
    grayscale: bool,
    reduction: int = 1,
    rgb: bool = True,
    check: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """One frame: (H, W) uint8 when `grayscale`, else (H, W, 3) uint8, RGB (or BGR with rgb=False).

    `reduction` 2, 4 or 8 decodes at 1/2, 1/4, 1/8 size (JPEG: in the DCT domain, several times
    faster than a full decode, and low-pass filtered). `check(data)` sees the file's bytes before
    they are decoded (e.g. to refuse a grayscale file in a colour clip). Damage raises FrameError.
    """
    path = Path(path)
    data = _file_bytes(path)
    if check is not None:
        check(data)
    image = cv2.imdecode(data, _READ_FLAGS[(grayscale, reduction)])
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
    return content_grayscale(_file_bytes(path), path)


def content_grayscale(data: np.ndarray, path: str | Path) -> bool:
    """`is_grayscale` of a file's bytes already read."""
    path = Path(path)
    jpeg = path.suffix.lower() in JPEG_SUFFIXES
    image = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8 if jpeg else cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError("cannot decode image (corrupt, truncated or not an image)", path)
    if image.ndim == 2:
        return True
    if image.ndim == 3 and image.shape[2] == 3:
        return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
    return False


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels


def _jpeg_channels(data: bytes) -> int | None:
    """Component count of the JPEG frame header (SOFn), walking the marker segments."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            position += 2
            continue
        if marker == 0xDA:  # start of scan before a frame header
            return None
        length = (data[position + 2] << 8) | data[position + 3]
        if marker in _JPEG_SOF:
            return data[position + 9] if position + 9 < len(data) else None
        position += 2 + length
    return None


def encoded_channels(data: np.ndarray, path: str | Path) -> int:
    """Channels as a frame file stores them (1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha), from
    the header for JPEG and PNG (no decoding), by decoding for other formats."""
    raw = memoryview(data)
    if len(raw) > 4 and raw[0] == 0xFF and raw[1] == 0xD8:
        channels = _jpeg_channels(raw)
        if channels:
            return int(channels)
    elif len(raw) > 25 and bytes(raw[1:4]) == b"PNG" and bytes(raw[12:16]) == b"IHDR" and raw[25] in _PNG_CHANNELS:
        return _PNG_CHANNELS[raw[25]]
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError("cannot decode image (corrupt, truncated or not an image)", path)
    return 1 if image.ndim == 2 else int(image.shape[2])


def file_channels(path: str | Path) -> int:
    """`encoded_channels` of a frame file."""
    path = Path(path)
    return encoded_channels(_file_bytes(path), path)
