"""Face alignment: one similarity transform per clip, from dlib landmarks on a reference frame.

The same transform is applied to every frame of a clip: aligning each frame separately adds
landmark jitter that looks exactly like the micro-motion the later stages try to capture. For
clips with head drift, `redetect_every: k` re-detects every k-th frame, fits a similarity between
those landmarks and the reference's, smooths its parameters over time and interpolates one
transform per frame. `method: resize` takes frames that are already cropped faces (CASME II's
`Cropped/`) and only resizes them.

Grayscale clips (SAMM) are decoded, detected and warped on one channel and replicated to three
channels once at the end.

`align_clip(..., allocate=f)` lets the caller provide the memory of the final (T,H,W,3) frames
(`f(shape)` returns an empty uint8 array): a pool worker uses it to warp straight into shared
memory that the writer process maps, instead of pickling the frames back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.align.landmarks import detect_faces, eye_centres, landmarks_in_box
from pipeline.config import ALIGN_METHODS, AlignSettings  # the align section's clip settings
from pipeline.datasets.layouts import ClipFolder
from pipeline.imaging import (
    JPEG_SUFFIXES,
    FrameError,
    content_grayscale,
    decode_frame,
    encoded_channels,
    file_channels,
    is_grayscale,
)
from pipeline.io.aligned_cache import AlignedClip
from pipeline.io.provenance import frame_files_fingerprint

METHODS = ALIGN_METHODS
DETECTOR = "dlib-hog+shape_predictor_68"
# Landmarks that micro-expressions barely move (temples, nose, eye corners): used to follow the head.
STABLE_POINTS = np.array([0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
Allocate = Callable[[tuple[int, ...]], np.ndarray]  # shape -> empty C-contiguous uint8 array


class AlignmentFailure(FrameError):
    """One clip could not be aligned (no face, degenerate landmarks, an empty folder)."""


# ---------------------------------------------------------------------------------------------
# Geometry


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


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity [[a, -b, tx], [b, a, ty]] mapping `source` points onto `target`."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    n = len(source)
    system = np.zeros((2 * n, 4))
    system[0::2] = np.column_stack([source[:, 0], -source[:, 1], np.ones(n), np.zeros(n)])
    system[1::2] = np.column_stack([source[:, 1], source[:, 0], np.zeros(n), np.ones(n)])
    a, b, tx, ty = np.linalg.lstsq(system, target.reshape(-1), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def smooth_parameters(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0, the window shrunk symmetrically at the ends.

    Symmetric windows keep a steady drift exactly (a linear trend is its own average).
    """
    half = window // 2
    out = np.empty_like(values, dtype=np.float64)
    n = len(values)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        out[i] = values[i - h : i + h + 1].mean(axis=0)
    return out


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of `outer` applied after `inner`."""
    return outer[:, :2] @ inner + np.hstack([np.zeros((2, 2)), outer[:, 2:]])


# ---------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class Detection:
    landmarks: np.ndarray  # (68, 2) in full-resolution pixels
    upsample: int  # dlib upsampling level that found the face
    score: float  # detector confidence
    scale: float  # factor the frame was downscaled by for detection (1.0: full size)


def detect(image: np.ndarray, settings: AlignSettings, upsample_levels: int | None = None) -> Detection | None:
    """The most confident face, trying upsampling levels 0..settings.upsample in turn."""
    height, width = image.shape[:2]
    factor = min(1.0, settings.detect_max_side / max(height, width))
    small = image if factor == 1.0 else cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    levels = settings.upsample if upsample_levels is None else upsample_levels
    for upsample in range(levels + 1):
        faces = detect_faces(small, upsample)
        if faces:
            score, box = faces[0]
            if factor != 1.0:
                import dlib  # the box is mapped back so landmarks use full-resolution detail

                box = dlib.rectangle(*(round(v / factor) for v in (box.left(), box.top(), box.right(), box.bottom())))
            return Detection(landmarks_in_box(image, box), upsample, float(score), float(factor))
    return None


# ---------------------------------------------------------------------------------------------
# Clips


class _FrameSource:
    """Decodes a clip's frames on demand (BGR or gray), checking they all have the first frame's size
    and its kind: a clip is grayscale when its first frame is a single-channel file (or when all
    its frames are colour files with three equal channels), and a colour frame in a grayscale clip
    or a single-channel frame in a colour clip is an AlignmentFailure naming both files (decoding
    it the clip's way would silently drop or invent colour).

    Frames are kept BGR: warping comes first and the small crops are converted to RGB at the end.
    """

    def __init__(self, folder: ClipFolder):
        self.clip = f"{folder.subject}/{folder.clip}"
        self.paths = [path for _, path in folder.frames]
        self.reduction = 1
        self.shape: tuple[int, ...] | None = None  # full-resolution frame shape
        self._checked = {0}
        self.grayscale = is_grayscale(self.paths[0])
        if self.grayscale and file_channels(self.paths[0]) >= 3:
            # A colour file that looks gray (a blank or fade-in first frame): the clip is grayscale
            # only if every frame is; probed here, at 1/8 size, for such clips only.
            self.grayscale = all(is_grayscale(path) for path in self.paths[1:])
            self._checked = set(range(len(self.paths))) if self.grayscale else {0}

    def _check_kind(self, index: int, data) -> None:
        """The frame's kind from its header (colour frames of a grayscale clip: also its content)."""
        if index in self._checked:
            return
        path = self.paths[index]
        channels = encoded_channels(data, path)
        if self.grayscale:
            mixed = channels >= 3 and not content_grayscale(data, path)
            gray, colour = self.paths[0], path
        else:
            mixed = channels <= 2
            gray, colour = path, self.paths[0]
        if mixed:
            raise AlignmentFailure(
                f"clip {self.clip} mixes grayscale and colour frames: {gray} is grayscale, {colour} is colour; "
                "convert its frames to one kind",
                path,
            )
        self._checked.add(index)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        frame = decode_frame(
            self.paths[index],
            self.grayscale,
            self.reduction,
            rgb=False,
            check=lambda data: self._check_kind(index, data),
        )
        height, width = frame.shape[:2]
        if self.shape is None:
            self.shape = frame.shape
        elif (
            self.reduction == 1
            and (height, width) != self.shape[:2]
            or self.reduction > 1
            and ((height, width) != tuple(-(-v // self.reduction) for v in self.shape[:2]))
        ):
            full = (height * self.reduction, width * self.reduction) if self.reduction > 1 else (height, width)
            raise AlignmentFailure(
                f"frame is about {full[1]}x{full[0]} but the clip's frames are {self.shape[1]}x{self.shape[0]}",
                self.paths[index],
            )
        return frame

    def reduce_for(self, affine: np.ndarray) -> np.ndarray:
        """Decode later frames at the largest 1/2, 1/4, 1/8 size the crop's scale allows (JPEG only).

        Returns the affine for frames at that size.
        """
        if self.paths[0].suffix.lower() in JPEG_SUFFIXES:
            scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
            while self.reduction < 8 and scale * self.reduction * 2 <= 1.0:
                self.reduction *= 2
        return _compose(affine, self.reduction_matrix())

    def reduction_matrix(self) -> np.ndarray:
        """Reduced -> full-size pixels: pixel x_r covers r*x_r .. r*x_r + r-1, centred on r*x_r + (r-1)/2."""
        r = self.reduction
        return np.array([[r, 0.0, (r - 1) / 2.0], [0.0, r, (r - 1) / 2.0]])


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def _output(count: int, settings: AlignSettings, grayscale: bool, allocate: Allocate) -> np.ndarray:
    """The array frames are warped into: the final one for colour, a one-channel one for grayscale."""
    shape = (count, settings.size, settings.size)
    return _empty(shape) if grayscale else allocate(shape + (3,))


def _rgb(frames: np.ndarray, allocate: Allocate) -> np.ndarray:
    """BGR crops become RGB, grayscale ones are replicated to three channels: once, at the end."""
    if frames.ndim == 4:
        flat = frames.reshape(-1, frames.shape[2], 3)
        cv2.cvtColor(flat, cv2.COLOR_BGR2RGB, dst=flat)
        return frames
    out = allocate(frames.shape + (3,))
    out[...] = frames[..., None]
    return out


def _warp(frame: np.ndarray, affine: np.ndarray, out: np.ndarray) -> None:
    size = (out.shape[1], out.shape[0])
    cv2.warpAffine(frame, affine, size, dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class _FixedWarp:
    """One affine warp for every frame of a clip: the source position of each output pixel is
    computed once, in OpenCV's fixed-point form (1/32 pixel, as warpAffine rounds it), and each
    frame is only interpolated (`cv2.remap`): about 0.21 ms instead of warpAffine's 0.36 ms per
    224x224 crop of a 640x480 frame, as warpAffine recomputes the positions for every frame."""

    def __init__(self, affine: np.ndarray, size: int):
        inverse = cv2.invertAffineTransform(affine)  # output pixel -> source position
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
        map_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
        map_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
        self._positions, self._fractions = cv2.convertMaps(
            map_x.astype(np.float32), map_y.astype(np.float32), cv2.CV_16SC2
        )

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        cv2.remap(
            frame,
            self._positions,
            self._fractions,
            cv2.INTER_LINEAR,
            dst=out,
            borderMode=cv2.BORDER_REPLICATE,
        )


def _find_reference(source: _FrameSource, settings: AlignSettings) -> tuple[int, Detection, list[np.ndarray]]:
    """Upsampled detection first, then the next frames; returns the index, detection and frames decoded."""
    decoded = []
    tried = min(settings.reference_candidates, len(source))
    for index in range(tried):
        decoded.append(source[index])
        found = detect(_detection_view(decoded[-1]), settings)
        if found is not None:
            return index, found, decoded
    raise AlignmentFailure(
        f"no face found in the first {tried} frame(s) (dlib HOG, upsampling up to {settings.upsample})", source.paths[0]
    )


def _detection_view(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _fallback(index: int, upsample: int) -> str:
    used = (["later_frame"] if index > 0 else []) + (["upsample"] if upsample > 0 else [])
    return "+".join(used) or "none"


def align_clip(folder: ClipFolder, settings: AlignSettings, allocate: Allocate | None = None) -> AlignedClip:
    """Decode, detect on the first frame that shows a face, warp every frame with one transform.

    `allocate(shape)` provides the memory of the returned frames (default: np.empty).
    """
    allocate = allocate or _empty
    if not folder.frames:
        raise AlignmentFailure("clip folder holds no image frames", folder.path)
    source = _FrameSource(folder)
    attrs: dict = {
        "source": f"{folder.path.parent.name}/{folder.path.name}",  # relative: caches move
        "method": settings.method,
        "grayscale": int(source.grayscale),
        "align_settings": settings.record(),
        "input_fingerprint": frame_files_fingerprint(folder.frames),
    }
    if settings.method == "resize":
        return _resize_clip(folder, source, settings, attrs, allocate)
    reference, found, decoded = _find_reference(source, settings)
    attrs.update(
        reference_frame=int(folder.frame_numbers[reference]),
        reference_index=reference,
        detector=DETECTOR,
        detect_upsample=found.upsample,
        detect_score=found.score,
        detect_scale=found.scale,
        fallback=_fallback(reference, found.upsample),
    )
    affine = similarity_transform(found.landmarks, settings)
    affines = None
    if settings.redetect_every > 0:
        frames, affines, used = _tracked_frames(source, decoded, reference, found, affine, settings, allocate)
        attrs["redetect_frames"] = [int(folder.frame_numbers[i]) for i in used]
        affine = affines[reference]
    else:
        warp_affine = source.reduce_for(affine)
        if source.reduction > 1:
            decoded = []  # decoded again at the reduced size, like every other frame
        frames = _output(len(source), settings, source.grayscale, allocate)
        warp = _FixedWarp(warp_affine, settings.size)
        for index in range(len(source)):
            warp(decoded[index] if index < len(decoded) else source[index], frames[index])
    attrs["source_size"] = [int(source.shape[1]), int(source.shape[0])]  # full resolution
    attrs["decode_reduction"] = source.reduction
    return AlignedClip(
        subject=folder.subject,
        clip=folder.clip,
        frames=_rgb(frames, allocate),
        frame_numbers=np.array(folder.frame_numbers, dtype=np.int64),
        landmarks=found.landmarks,
        affine=affine,
        attrs=attrs,
        frame_affines=affines,  # a dataset of the cache: an attribute would be limited to ~1,365 frames
    )


def _tracked_frames(source, decoded, reference, found, affine, settings, allocate):
    """Re-detect every k-th frame, smooth the similarity to the reference, one transform per frame.

    Frames are decoded twice (detection frames at full size, then every frame for warping) rather
    than all held in memory: a long SAMM clip at full size would take gigabytes.
    """
    count = len(source)
    indices = list(range(reference, count, settings.redetect_every))
    if indices[-1] != count - 1:
        indices.append(count - 1)
    stable = found.landmarks[STABLE_POINTS]
    used, params = [], []
    for index in indices:
        if index == reference:
            match = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        else:
            frame = decoded[index] if index < len(decoded) else source[index]
            # the face is where it was: no upsampling passes, a miss simply drops this detection
            other = detect(_detection_view(frame), settings, upsample_levels=0)
            if other is None:
                continue
            match = fit_similarity(other.landmarks[STABLE_POINTS], stable)
        used.append(index)
        params.append([match[0, 0], match[1, 0], match[0, 2], match[1, 2]])
    smoothed = smooth_parameters(np.array(params), settings.smooth_window)
    per_frame = np.column_stack([np.interp(np.arange(count), used, smoothed[:, j]) for j in range(4)])
    affines = np.array([_compose(affine, np.array([[a, -b, tx], [b, a, ty]])) for a, b, tx, ty in per_frame])
    source.reduce_for(affine)
    reduced = source.reduction_matrix()
    out = _output(count, settings, source.grayscale, allocate)
    for index in range(count):
        frame = decoded[index] if source.reduction == 1 and index < len(decoded) else source[index]
        _warp(frame, _compose(affines[index], reduced), out[index])
    return out, affines, used


def _resize_clip(
    folder: ClipFolder, source: _FrameSource, settings: AlignSettings, attrs: dict, allocate: Allocate
) -> AlignedClip:
    """Frames that are already face crops: resize only; landmarks NaN, the affine is the scaling."""
    size = settings.size
    out = _output(len(source), settings, source.grayscale, allocate)
    for index in range(len(source)):
        cv2.resize(source[index], (size, size), dst=out[index], interpolation=cv2.INTER_AREA)
    height, width = source.shape[:2]
    sx, sy = size / width, size / height
    affine = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])  # cv2.resize's pixel-centre mapping
    attrs.update(
        reference_frame=int(folder.frame_numbers[0]), reference_index=0, source_size=[width, height], fallback="none"
    )
    return AlignedClip(
        subject=folder.subject,
        clip=folder.clip,
        frames=_rgb(out, allocate),
        frame_numbers=np.array(folder.frame_numbers, dtype=np.int64),
        landmarks=np.full((68, 2), np.nan, np.float32),
        affine=affine,
        attrs=attrs,
    )


def reference_view(clip: AlignedClip) -> tuple[np.ndarray, np.ndarray]:
    """The aligned reference frame and its landmarks in crop coordinates (NaN for `resize`)."""
    index = int(clip.attrs.get("reference_index", 0))
    return clip.frames[index], transform_points(np.asarray(clip.landmarks, np.float64), np.asarray(clip.affine))
