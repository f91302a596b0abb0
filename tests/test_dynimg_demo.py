"""Dual-phase DIs on demo clips whose true apex is known: the two phases carry opposite motion."""

from __future__ import annotations

import csv

import numpy as np

from pipeline.align.clip import AlignSettings, align_clip
from pipeline.datasets.layouts import find_clip_folders
from pipeline.dynimg.rank_pooling import dynamic_image


def test_onset_apex_and_apex_offset_dis_have_opposite_motion(tiny_demo):
    root = tiny_demo / "casme2" / "CASME2_RAW_selected"
    clips = find_clip_folders("casme2", root)
    with open(tiny_demo / "casme2" / "ground_truth.csv", newline="") as handle:
        truth = list(csv.DictReader(handle))
    correlations = []
    for row in truth:
        clip = align_clip(clips[(row["subject"], row["clip"])], AlignSettings(size=112))
        index = {int(n): i for i, n in enumerate(clip.frame_numbers)}
        onset, apex, offset = (index[int(row[k])] for k in ("onset", "apex", "offset"))
        rise = dynamic_image(clip.frames[onset : apex + 1]).mean(axis=2)
        fall = dynamic_image(clip.frames[apex : offset + 1]).mean(axis=2)
        assert not np.allclose(rise, fall)
        # where the face moves most, motion towards the apex is undone after it
        moving = np.abs(rise) > np.percentile(np.abs(rise), 95)
        correlations.append(np.corrcoef(rise[moving], fall[moving])[0, 1])
    assert all(c < 0 for c in correlations), correlations
    assert np.median(correlations) < -0.5, correlations
