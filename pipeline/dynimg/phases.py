"""Phases: frame intervals anchored on a clip's onset, apex and offset, and per-clip corrections.

A phase is `[start, end]` with anchors `onset`, `apex` or `offset`, each optionally shifted by
`+N` / `-N` frames; the apex belongs to both default phases.

Adaptive anchors come from each clip's own motion (pipeline/motion.py `motion_anchors`, on the
aligned frames onset..offset), whatever the annotated apex: `peak` is the frame of peak motion
relative to the onset, `mNN` (m1..m99) the first frame by which the clip's cumulative
frame-to-frame motion reaches NN % of its total (`m50`: half the motion lies before it; `m33` and
`m67` cut it in thirds). They are always within onset..offset.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ANCHORS = ("onset", "apex", "offset")  # the annotated anchors (the ones overrides may set)
DEFAULT_PHASES = {"full": ("onset", "offset"), "onset_apex": ("onset", "apex"), "apex_offset": ("apex", "offset")}

_ANCHOR = re.compile(r"^\s*(onset|apex|offset|peak|m[1-9][0-9]?)\s*(?:([+-])\s*(\d+))?\s*$")


def is_motion_anchor(anchor: str) -> bool:
    """`peak` or `mNN`: an anchor placed from the clip's motion profile, not from the annotation."""
    return anchor not in ANCHORS


@dataclass(frozen=True)
class PhaseBound:
    anchor: str
    shift: int = 0

    @classmethod
    def parse(cls, text: object) -> PhaseBound:
        match = _ANCHOR.match(str(text))
        if not match:
            raise ValueError(
                f"phase bound {text!r} must be onset, apex or offset (annotated), or peak (motion peak) or mNN "
                "(NN % of the cumulative motion, m1..m99), optionally followed by +N or -N"
            )
        shift = int(match.group(3) or 0) * (-1 if match.group(2) == "-" else 1)
        return cls(match.group(1), shift)

    def frame(self, onset: int, apex: int, offset: int, motion: Mapping[str, int] | None = None) -> int:
        """The bound's frame number; `motion` holds the clip's motion anchors (`peak`, `mNN`)."""
        if is_motion_anchor(self.anchor):
            if not motion or self.anchor not in motion:
                raise ValueError(f"phase bound {self} needs the clip's motion anchor {self.anchor!r}")
            return int(motion[self.anchor]) + self.shift
        return {"onset": onset, "apex": apex, "offset": offset}[self.anchor] + self.shift

    def __str__(self) -> str:
        return self.anchor + (f"{self.shift:+d}" if self.shift else "")


def parse_phases(spec: Mapping[str, object] | None) -> dict[str, tuple[PhaseBound, PhaseBound]]:
    """Phases from params: {name: [start, end]} with anchors like 'apex' or 'onset+2'."""
    spec = spec or DEFAULT_PHASES
    phases = {}
    for name, bounds in spec.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
            raise ValueError(f"phase name {name!r} may hold only letters, digits and '_'")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"phase {name!r} must be a [start, end] pair, got {bounds!r}")
        phases[str(name)] = (PhaseBound.parse(bounds[0]), PhaseBound.parse(bounds[1]))
    return phases


def motion_anchor_names(phases: Mapping[str, tuple[PhaseBound, PhaseBound]]) -> list[str]:
    """The motion anchors (`peak`, `mNN`) the phases use, sorted; empty for annotated phases only."""
    return sorted({b.anchor for bounds in phases.values() for b in bounds if is_motion_anchor(b.anchor)})


def outside_clip(
    bounds: tuple[PhaseBound, PhaseBound], onset: int, apex: int, offset: int, motion: Mapping[str, int] | None = None
) -> bool:
    """Whether the phase's anchors fall outside the clip's onset..offset (e.g. `apex+999`)."""
    return any(not onset <= bound.frame(onset, apex, offset, motion) <= offset for bound in bounds)


def phase_frames(
    bounds: tuple[PhaseBound, PhaseBound],
    onset: int,
    apex: int,
    offset: int,
    min_frames: int = 1,
    motion: Mapping[str, int] | None = None,
) -> tuple[int, int]:
    """The phase's first and last frame number, within the clip's onset..offset.

    Anchors outside onset..offset are an error, never clamped (DESIGN.md section 9): the stage
    reports such clips beforehand (`outside_clip`), or drops them with `dynimg.outside_clip: drop`.
    A phase shorter than `min_frames` is widened one frame at a time, alternately at its end and
    at its start, staying within onset..offset, until it is long enough or spans the whole clip:
    an onset-apex phase with the apex on the onset frame becomes [onset, onset + 1] rather than a
    motionless single frame.
    """
    start, end = (bound.frame(onset, apex, offset, motion) for bound in bounds)
    if outside_clip(bounds, onset, apex, offset, motion):
        raise ValueError(
            f"phase [{bounds[0]}, {bounds[1]}] spans frames {start}..{end}, outside the clip's "
            f"onset..offset {onset}..{offset}"
        )
    if end < start:
        raise ValueError(f"phase ends (frame {end}) before it starts (frame {start})")
    return widen_window(start, end, onset, offset, min_frames)


def widen_window(start: int, end: int, onset: int, offset: int, min_frames: int) -> tuple[int, int]:
    """[start, end] widened within onset..offset to at least `min_frames` frames (see `phase_frames`)."""
    grow_end = True
    while end - start + 1 < min_frames and (start > onset or end < offset):
        if (grow_end and end < offset) or start == onset:
            end += 1
        else:
            start -= 1
        grow_end = not grow_end
    return start, end


def _override_key(sample: Mapping[str, Any], folders: Counter) -> str:
    """`subject/clip`, or `subject/clip/onset` where the table holds several samples of that folder."""
    key = f"{sample['subject']}/{sample['clip']}"
    return f"{key}/{int(sample['onset'])}" if folders[key] > 1 else key


def apply_overrides(
    samples: list[dict], overrides: Mapping[str, Mapping[str, object]] | None
) -> tuple[list[dict], list[str]]:
    """Samples with per-clip corrections {"subject/clip": {onset|apex|offset: frame}} applied.

    Where a folder holds several samples (CAS(ME)^3: a video with several micro-expressions) the
    key is "subject/clip/onset", the onset as in the samples table. Returns the corrected samples
    (apex_source "override" where the apex was set) and one message per override that names no
    sample or holds anything but those three keys.
    """
    overrides = dict(overrides or {})
    problems = []
    folders = Counter(f"{s['subject']}/{s['clip']}" for s in samples)
    by_key = {_override_key(s, folders): s for s in samples}
    for key, values in overrides.items():
        if key not in by_key:
            if folders[key] > 1:
                onsets = ", ".join(str(s["onset"]) for s in samples if f"{s['subject']}/{s['clip']}" == key)
                problems.append(
                    f"override {key}: the folder holds {folders[key]} samples (onsets {onsets}); "
                    f"name one as subject/clip/onset, e.g. {key}/{onsets.split(', ')[0]}"
                )
            else:
                problems.append(
                    f"override {key}: no such clip in the samples table (keys are subject/clip, e.g. sub01/EP02_01f, "
                    "or subject/clip/onset where a folder holds several samples)"
                )
        elif not isinstance(values, Mapping) or not set(values) <= set(ANCHORS) or not values:
            problems.append(
                f"override {key}: expected a mapping of onset / apex / offset to frame numbers, got {values!r}"
            )
    if problems:
        return samples, problems
    corrected = []
    for sample in samples:
        key = _override_key(sample, folders)
        change = overrides.get(key)
        if change:
            sample = {**sample, **{k: int(v) for k, v in change.items()}}  # type: ignore[arg-type]
            if "apex" in change:
                sample["apex_source"] = "override"
            if not sample["onset"] <= sample["apex"] <= sample["offset"]:
                problems.append(f"override {key}: onset <= apex <= offset does not hold")
        corrected.append(sample)
    return corrected, problems
