"""Contact sheets of a DI cache (`mer cache preview`): every phase of a few clips, to check a run at a glance.

Without a choice of clips, every class and every subject is shown with few clips: classes in turn,
each from a subject not shown yet while there is one, then the subjects still missing; more rows
add the other (class, subject) pairs, one clip each.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: the pipeline never opens windows
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from pipeline.atomic import atomic_output
from pipeline.errors import MerError
from pipeline.io.dynamic_image_cache import DynamicImageSet, read_dynamic_images

DEFAULT_ROWS = 12  # most clips drawn when neither clips nor a count are given


def pick_samples(data: DynamicImageSet, count: int | None = None) -> list[int]:
    """One clip per (class, subject) pair, every class and every subject first; sorted by class, subject.

    `count`: the number of clips (at most the number of pairs); None: as many as it takes to show
    every class and every subject, at most DEFAULT_ROWS.
    """
    labels, subjects = data.samples["label"].tolist(), data.samples["subject"].tolist()
    pairs: dict[tuple[int, str], int] = {}
    for index, key in enumerate(zip(labels, subjects)):
        pairs.setdefault(key, index)  # the first clip of each (class, subject) pair
    classes, people = Counter(), Counter()
    order: list[int] = []
    left = dict(pairs)
    while left:
        # a new class from a new subject first, then a new class, then a new subject, then the rest;
        # among equals the class and the subject shown least, then the table order
        label, subject = min(
            left,
            key=lambda k: (
                -(2 * (classes[k[0]] == 0) + (people[k[1]] == 0)),
                classes[k[0]],
                people[k[1]],
                left[k],
            ),
        )
        order.append(left.pop((label, subject)))
        classes[label] += 1
        people[subject] += 1
    if count is None:
        count, seen_classes, seen_subjects = len(order), set(), set()
        for n, index in enumerate(order, start=1):
            seen_classes.add(labels[index])
            seen_subjects.add(subjects[index])
            if seen_classes == set(labels) and seen_subjects == set(subjects):
                count = n
                break
        count = min(count, DEFAULT_ROWS)
    return sorted(order[: max(1, count)], key=lambda i: (labels[i], subjects[i], i))


def find_samples(data: DynamicImageSet, clips: Sequence[str], cache: str | Path) -> list[int]:
    """The samples of each `subject/clip` (or sample id) asked for, in the order asked."""
    s = data.samples
    keys = [f"{subject}/{clip}" for subject, clip in zip(s["subject"].tolist(), s["clip"].tolist())]
    ids = s["sample_id"].tolist()
    chosen: list[int] = []
    missing = []
    for wanted in clips:
        wanted = wanted.strip("/")
        found = [i for i, (key, sid) in enumerate(zip(keys, ids)) if wanted in (key, sid, sid.split("/", 1)[-1])]
        if not found:
            missing.append(wanted)
        chosen += [i for i in found if i not in chosen]
    if missing:
        raise MerError(
            f"{cache} holds no clip {', '.join(missing)}; give subject/clip as `mer cache info` counts them, "
            f"e.g. {keys[0]}"
        )
    return chosen


def dynamic_image_sheet(data: DynamicImageSet, indices: list[int]) -> Figure:
    """One row per sample, one column per phase (full DI, then the phase DIs)."""
    phases = data.phases
    figure, axes = plt.subplots(
        len(indices), len(phases), figsize=(2.2 * len(phases), 2.4 * len(indices) + 0.4), squeeze=False
    )
    for row, index in enumerate(indices):
        label = data.label_names[int(data.samples["label"][index])]
        for col, phase in enumerate(phases):
            axis = axes[row][col]
            axis.imshow(data.images[phase][index])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(phase, fontsize=10)
        s = data.samples
        axes[row][0].set_ylabel(
            f"{s['subject'][index]}/{s['clip'][index]}\n{label}\n{s['onset'][index]}-{s['apex'][index]}-{s['offset'][index]}",
            fontsize=8,
        )
    datasets = sorted(set(data.samples["dataset"].tolist()))
    figure.suptitle(f"{'+'.join(datasets)}: {len(indices)} of {len(data)} clips", fontsize=10)
    figure.tight_layout()
    return figure


def write_preview(cache: str | Path, out: str | Path, clips: Sequence[str] = (), count: int | None = None) -> int:
    """Draw the `clips` (subject/clip) of a DI cache, or a choice of `pick_samples`, into the PNG `out`;
    returns the number of samples drawn."""
    data = read_dynamic_images(cache)
    if len(data) == 0:
        raise MerError(f"{cache} holds no samples")
    indices = find_samples(data, clips, cache) if clips else pick_samples(data, count)
    figure = dynamic_image_sheet(data, indices)
    try:
        with atomic_output(out) as tmp:
            figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)
    return len(indices)
