"""The dynimg stage on a small aligned cache, and `mer cache info` / `mer cache verify`."""

from __future__ import annotations

import csv
import json
import zlib

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.io.aligned_cache import AlignedCacheWriter, AlignedClip
from pipeline.io.dynamic_image_cache import read_dynamic_images
from pipeline.io.provenance import dynamic_images_fingerprint
from pipeline.io.samples import SAMPLE_COLUMNS
from stages.cli import cli
from tests.conftest import write_params


def _blob_clip(subject: str, clip: str, first: int, n: int, apex: int, seed: int) -> AlignedClip:
    """A square that brightens until the apex and fades after it, on a noisy face-sized image."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    intensity = np.where(t <= apex, t / max(apex, 1), (n - 1 - t) / max(n - 1 - apex, 1))
    frames = np.repeat(rng.integers(60, 120, (1, 64, 64, 3)), n, axis=0).astype(np.float32)
    frames[:, 20:40, 20:40] += 60 * intensity[:, None, None, None]
    return AlignedClip(
        subject, clip, frames.astype(np.uint8), np.arange(first, first + n), np.zeros((68, 2)), np.eye(2, 3)
    )


@pytest.fixture
def inputs(tmp_path):
    clips = [
        ("sub01", "EP01_01", 46, 12, 5, "happiness"),
        ("sub01", "EP02_01f", 3, 9, 2, "surprise"),
        ("sub02", "EP07_02", 120, 15, 9, "disgust"),
        ("sub02", "EP08_01", 7, 10, 0, "others"),
    ]  # apex on the onset frame
    aligned = tmp_path / "aligned.h5"
    with AlignedCacheWriter(aligned, "casme2", {"size": 64}) as writer:
        for i, (subject, clip, first, n, apex, _) in enumerate(clips):
            writer.add(_blob_clip(subject, clip, first, n, apex, i))
    samples = tmp_path / "samples.csv"
    with samples.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(SAMPLE_COLUMNS)
        for row, (subject, clip, first, n, apex, emotion) in enumerate(clips, start=2):
            out.writerow(
                [
                    "casme2",
                    subject,
                    clip,
                    first,
                    first + apex,
                    first + n - 1,
                    "annotated",
                    n,
                    emotion,
                    emotion,
                    "12",
                    row,
                ]
            )
    return aligned, samples


def _dynimg(tmp_path, inputs, params, *extra):
    aligned, samples = inputs
    out = tmp_path / "di.h5"
    args = [
        "dynimg",
        "--aligned",
        str(aligned),
        "--samples",
        str(samples),
        "--classes",
        "casme2-5",
        "--out",
        str(out),
        "--params",
        str(write_params(tmp_path, params)),
        *extra,
    ]
    return CliRunner().invoke(cli, args), out


def test_dynimg_writes_a_cache_that_info_and_verify_accept(tmp_path, inputs, project_params):
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(out)
    assert data.phases == ["full", "onset_apex", "apex_offset"]
    assert data.images["full"].shape == (4, 64, 64, 3)  # dynimg.size null: the aligned size, never enlarged
    assert data.label_names == ["happiness", "disgust", "repression", "surprise", "others"]
    assert data.samples["label"].tolist() == [0, 3, 1, 4]
    assert data.samples["sample_id"].tolist() == [
        "casme2/sub01/EP01_01",
        "casme2/sub01/EP02_01f",
        "casme2/sub02/EP07_02",
        "casme2/sub02/EP08_01",
    ]
    assert "1 clip(s) had a onset_apex phase shorter than 2 frames: widened" in result.output
    assert not np.array_equal(
        data.images["onset_apex"][3], data.images["onset_apex"][3].min()
    )  # motion, not a flat frame
    # the square brightens then fades: the two phase DIs have opposite sign in it
    rise, fall = data.images["onset_apex"][0], data.images["apex_offset"][0]
    assert rise[30, 30].mean() > rise[5, 5].mean() and fall[30, 30].mean() < fall[5, 5].mean()  # 64 px: square 20..39
    # the fourth clip's apex lies on its onset: onset_apex is short, apex_offset duplicates the full clip
    assert "degenerate onset_apex: 1 clip(s) shorter than min_phase_frames (2)" in result.output
    assert "degenerate apex_offset: 1 clip(s) equal to the full clip" in result.output
    with h5py.File(out) as handle:
        record = json.loads(handle.attrs["degenerate_phases"])
    assert (
        record["policy"] == "widen"
        and record["short"] == {"onset_apex": 1}
        and record["duplicate"] == {"apex_offset": 1}
    )
    assert record["clips"]["short"]["onset_apex"] == ["casme2/sub02/EP08_01"] and record["dropped_rows"] == {}

    info = CliRunner().invoke(cli, ["cache", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "mer.dynamic_images" in info.output and "happiness 1" in info.output and "fingerprint" in info.output
    assert CliRunner().invoke(cli, ["cache", "verify", str(out)]).exit_code == 0


def test_same_inputs_give_identical_files_whatever_the_jobs(tmp_path, inputs, project_params):
    _, first = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    copy = first.read_bytes()
    result, second = _dynimg(tmp_path, inputs, project_params, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert second.read_bytes() == copy


def test_a_min_phase_frames_that_widens_nothing_leaves_the_file_byte_identical(tmp_path, inputs, project_params):
    # the shortest phase below spans 6 frames (apex_offset of sub02/EP07_02)
    project_params["dynimg"]["phases"] = {"full": ["onset", "offset"], "apex_offset": ["apex", "offset"]}
    files = {}
    for value in (2, 6, 7):
        project_params["dynimg"]["min_phase_frames"] = value
        result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
        assert result.exit_code == 0, result.output
        files[value] = out.read_bytes()
        recorded = __import__("json").loads(read_dynamic_images(out).attrs["params"])
        assert ("min_phase_frames" in recorded) == (value == 7), recorded  # recorded only when it widened a phase
    assert files[2] == files[6]
    assert files[7] != files[6]


def test_verify_detects_a_flipped_byte(tmp_path, inputs, project_params):
    _, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    data = bytearray(out.read_bytes())
    with __import__("h5py").File(out) as handle:
        offset = handle["images/full"].id.get_chunk_info(0).byte_offset
    data[offset + 10] ^= 0xFF
    out.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["cache", "verify", str(out)])
    assert result.exit_code != 0
    assert "images/full" in result.output


def test_verify_checks_the_fast_checksum_of_aligned_frames(tmp_path, inputs):
    """`mer cache verify` reports an aligned clip whose xxh3_128 no longer matches its frames (which
    every read-time check would refuse), and passes the cache before that."""
    import h5py

    aligned, _ = inputs
    assert CliRunner().invoke(cli, ["cache", "verify", str(aligned)]).exit_code == 0
    with h5py.File(aligned, "a") as handle:
        handle["sub02/EP07_02/frames"].attrs["xxh3_128"] = "0" * 32
    result = CliRunner().invoke(cli, ["cache", "verify", str(aligned)])
    assert result.exit_code != 0
    assert "sub02/EP07_02/frames: xxh3_128 checksum damaged (the data match their sha256)" in result.output


def test_bad_phase_setting_is_rejected_before_anything_is_written(tmp_path, inputs, project_params):
    project_params["dynimg"]["phases"] = {"full": ["onset", "middle"]}
    result, out = _dynimg(tmp_path, inputs, project_params)
    assert result.exit_code != 0
    assert "invalid dynimg settings" in result.output and "middle" in result.output
    assert not out.exists()


def test_preview_draws_every_phase_of_a_few_clips(tmp_path, inputs, project_params):
    _, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    png = tmp_path / "preview.png"
    result = CliRunner().invoke(cli, ["cache", "preview", str(out), "--out", str(png), "--count", "2"])
    assert result.exit_code == 0, result.output
    import cv2

    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 500  # 2 rows x 3 phase columns


def test_apex_sources_and_overrides(tmp_path, inputs, project_params):
    project_params["dynimg"].update(apex="estimated", overrides={"sub02/EP07_02": {"apex": 125}})
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(out)
    # the squares peak at frames 46+5 and 3+2: estimated from the aligned frames; the third is overridden
    # (the fourth clip starts at its peak: motion relative to the onset frame cannot locate it)
    assert (np.abs(data.samples["apex"][:3] - [51, 5, 125]) <= [1, 1, 0]).all()
    assert data.samples["apex_source"].tolist() == ["estimated", "estimated", "override", "estimated"]

    project_params["dynimg"].update(apex="annotated", overrides={"sub09/EP01_01": {"apex": 3}})
    result, _ = _dynimg(tmp_path, inputs, project_params)
    assert result.exit_code != 0 and "sub09/EP01_01" in result.output and "no such clip" in result.output


def test_composite_table_reads_one_aligned_cache_per_dataset(tmp_path, inputs, project_params):
    aligned, samples = inputs
    other = tmp_path / "samm.h5"
    with AlignedCacheWriter(other, "samm", {"size": 64}) as writer:
        writer.add(_blob_clip("006", "006_1_2", 5562, 11, 4, 9))
    combined = tmp_path / "combined.csv"
    lines = samples.read_text().splitlines()
    lines.append("samm,006,006_1_2,5562,5566,5572,annotated,11,happiness,happiness,12,15")
    combined.write_text("\n".join(lines) + "\n")
    args = [
        "dynimg",
        "--aligned",
        f"casme2={aligned}",
        "--aligned",
        f"samm={other}",
        "--samples",
        str(combined),
        "--classes",
        "casme2-5",
        "--out",
        str(tmp_path / "di.h5"),
        "--params",
        str(write_params(tmp_path, project_params)),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(tmp_path / "di.h5")
    assert data.samples["sample_id"].tolist()[-1] == "samm/006/006_1_2" and len(data) == 5
    args[2] = str(aligned)  # a plain FILE is ambiguous for a table of two datasets
    del args[3:5]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "--aligned samm=cache/aligned/samm.h5" in result.output


@pytest.mark.parametrize("damage", ["missing_dataset", "old_schema"])
def test_train_refuses_an_incomplete_or_foreign_cache(tmp_path, inputs, project_params, damage):
    import h5py

    _, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    with h5py.File(out, "a") as handle:
        if damage == "missing_dataset":
            del handle["images/onset_apex"]
        else:
            handle.attrs["schema_version"] = 0
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dynamic-images",
            str(out),
            "--out",
            str(tmp_path / "run"),
            "--params",
            str(write_params(tmp_path, project_params)),
        ],
    )
    assert result.exit_code == 1
    expected = "lacks images/onset_apex" if damage == "missing_dataset" else "schema version 0, this tool reads 1"
    assert expected in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("checksum", ["xxh3_128", "sha256"])
def test_dynimg_refuses_overwritten_aligned_frames_and_writes_nothing(tmp_path, inputs, project_params, checksum):
    """Frames are checked against their fast checksum as they are read; caches written before it
    was stored (no xxh3_128 attribute) against their sha256."""
    import h5py

    aligned, _ = inputs
    with h5py.File(aligned, "a") as handle:
        frames = handle["sub02/EP07_02/frames"]
        assert "xxh3_128" in frames.attrs
        if checksum == "sha256":
            for subject in handle:
                for clip in handle[subject]:
                    del handle[subject][clip]["frames"].attrs["xxh3_128"]
        offsets = [frames.id.get_chunk_info(k).byte_offset for k in range(4)]
        stored = frames.attrs["sha256"]
    data = bytearray(aligned.read_bytes())
    for offset in offsets:  # 4 x 10,000 = 40,000 bytes of one clip's frames
        data[offset : offset + 10_000] = np.random.default_rng(0).integers(0, 256, 10_000, np.uint8).tobytes()
    aligned.write_bytes(bytes(data))
    with h5py.File(aligned) as handle:
        assert handle["sub02/EP07_02/frames"].attrs["sha256"] == stored  # the fingerprint does not see it
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code != 0
    assert f"{aligned}, clip sub02/EP07_02: frames do not match their stored {checksum}" in result.output
    assert "1 of 4 clips; nothing was written" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_fingerprint_lists_the_sha256_stored_with_each_samples_frames_in_order(
    tmp_path, inputs, project_params, jobs
):
    """What the DI cache's fingerprint is made of, whatever the number of workers: a clip aligned
    again (other frames, another stored sha256) gives another fingerprint."""
    aligned, samples = inputs
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", jobs)
    assert result.exit_code == 0, result.output
    with samples.open() as handle:
        keys = [f"{row['subject']}/{row['clip']}/frames" for row in csv.DictReader(handle)]
    with h5py.File(aligned) as handle:
        stored = [handle[key].attrs["sha256"] for key in keys]
    assert len(set(stored)) == len(keys)
    with h5py.File(out) as handle:
        params, fingerprint = json.loads(handle.attrs["params"]), handle.attrs["fingerprint"]
    assert fingerprint == dynamic_images_fingerprint(samples, params, stored)
    assert fingerprint != dynamic_images_fingerprint(samples, params, [*stored[:-1], "0" * 64])


@pytest.mark.parametrize(
    "damage, message",
    [
        ("swapped", "samples.csv line 3 (sub01/EP02_01f): onset 11, apex 5, offset 3: onset <= apex <= offset"),
        ("duplicate", "samples.csv line 6 (sub01/EP01_01): the same sample (clip and onset 46) as line 2"),
        ("n_frames", "samples.csv line 4 (sub02/EP07_02): n_frames 14 but onset..offset spans 15 frames"),
        ("no_frames", "samples.csv line 5 (sub02/EP08_01): frames [17, 18] of onset..offset 7..18 are not in"),
    ],
)
def test_dynimg_refuses_a_samples_table_that_breaks_its_invariants(tmp_path, inputs, project_params, damage, message):
    _, samples = inputs
    lines = samples.read_text().splitlines()
    if damage == "swapped":  # onset and offset of line 3 exchanged
        cells = lines[2].split(",")
        cells[3], cells[5] = cells[5], cells[3]
        lines[2] = ",".join(cells)
    elif damage == "duplicate":
        lines.append(lines[1])
    elif damage == "n_frames":
        lines[3] = lines[3].replace(",annotated,15,", ",annotated,14,")
    else:  # offset beyond the aligned frames (n_frames kept consistent)
        lines[4] = lines[4].replace(",16,annotated,10,", ",18,annotated,12,")
    samples.write_text("\n".join(lines) + "\n")
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not out.exists()


def test_phase_anchors_outside_the_clip_are_an_error_or_dropped_never_clamped(tmp_path, inputs, project_params):
    project_params["dynimg"]["phases"] = {"full": ["onset", "offset"], "onset_apex": ["onset", "apex+999"]}
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code != 0 and not out.exists()
    assert "onset_apex [onset, apex+999] reach beyond onset..offset in 4 of 4 clips" in result.output
    assert "(sub01/EP01_01, sub01/EP02_01f, sub02/EP07_02, sub02/EP08_01)" in result.output
    assert "outside_clip: drop" in result.output
    # apex+7 leaves the clip in 3 of the 4 (only sub02/EP08_01, apex on its onset, has 7 frames after it)
    project_params["dynimg"]["phases"]["onset_apex"] = ["onset", "apex+7"]
    project_params["dynimg"]["outside_clip"] = "drop"
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "dropped 3 clip(s) whose phases reach beyond onset..offset (outside_clip: drop)" in result.output
    data = read_dynamic_images(out)
    assert data.samples["sample_id"].tolist() == ["casme2/sub02/EP08_01"]
    assert data.attrs["outside_clip_dropped"] == 3


def test_several_samples_of_one_folder_get_their_own_ids(tmp_path, project_params):
    """CAS(ME)^3: one video folder holds several micro-expressions; each is a sample of its own."""
    aligned = tmp_path / "aligned.h5"
    with AlignedCacheWriter(aligned, "casme3", {"size": 64}) as writer:
        writer.add(_blob_clip("spNO.1", "e", 50, 80, 20, 0))
        writer.add(_blob_clip("spNO.2", "a", 0, 20, 5, 1))
    samples = tmp_path / "samples.csv"
    rows = [
        ("spNO.1", "e", 62, 68, 96, "annotated", "others", 3),
        ("spNO.1", "e", 96, 102, 106, "imputed_outside", "disgust", 4),
        ("spNO.1", "e", 110, 115, 120, "annotated", "disgust", 5),
        ("spNO.2", "a", 2, 6, 15, "annotated", "others", 6),
    ]
    with samples.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(SAMPLE_COLUMNS)
        for subject, clip, onset, apex, offset, source, emotion, row in rows:
            out.writerow(
                ["casme3", subject, clip, onset, apex, offset, source, offset - onset + 1, emotion, emotion, "", row]
            )
    project_params["dynimg"].update(overrides={"spNO.1/e/110": {"apex": 112}})
    inputs = (aligned, samples)
    result, out = _dynimg(tmp_path, inputs, project_params, "--classes", "others=others,disgust=disgust")
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(out)
    assert data.samples["sample_id"].tolist() == [
        "casme3/spNO.1/e/62",
        "casme3/spNO.1/e/96",
        "casme3/spNO.1/e/110",
        "casme3/spNO.2/a",  # one sample in that folder: the id stays dataset/subject/clip
    ]
    assert data.samples["apex"].tolist()[2] == 112 and data.samples["apex_source"].tolist()[2] == "override"
    # apex: annotated leaves out an apex annotate estimated because the sheet's lay outside the clip.
    project_params["dynimg"].update(apex="annotated", overrides={})
    result, out = _dynimg(tmp_path, inputs, project_params, "--classes", "others=others,disgust=disgust")
    assert result.exit_code == 0, result.output
    assert "spNO.1/e/96" in result.output
    assert read_dynamic_images(out).samples["sample_id"].tolist() == [
        "casme3/spNO.1/e/62",
        "casme3/spNO.1/e/110",
        "casme3/spNO.2/a",
    ]
    # A folder with several samples cannot be overridden by subject/clip alone.
    project_params["dynimg"].update(apex="annotated_or_estimated", overrides={"spNO.1/e": {"apex": 70}})
    result, _ = _dynimg(tmp_path, inputs, project_params, "--classes", "others=others,disgust=disgust")
    assert result.exit_code != 0 and "the folder holds 3 samples (onsets 62, 96, 110)" in result.output


def test_without_classes_labels_follow_the_formats_preset(tmp_path, inputs, project_params):
    """No --classes and none in params: the order of annotate's default preset (casme2-5), as the
    pipeline's `--classes casme2-5` gives, not the labels sorted."""
    aligned, samples = inputs
    out = tmp_path / "di.h5"
    args = ["dynimg", "--aligned", str(aligned), "--samples", str(samples), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--params", str(write_params(tmp_path, project_params))])
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(out)
    assert data.label_names == ["happiness", "disgust", "repression", "surprise", "others"]
    assert data.samples["label"].tolist() == [0, 3, 1, 4]


def test_default_label_order():
    from pipeline.datasets.presets import default_label_names

    assert default_label_names(["samm"], ["other", "anger"]) == ["anger", "contempt", "happiness", "surprise", "other"]
    # labels a preset does not hold (a custom mapping) or a format without a preset: sorted, as annotate's `emotions`
    assert default_label_names(["casme2"], ["positive", "negative"]) == ["negative", "positive"]
    assert default_label_names(["generic"], ["sad", "happy"]) == ["happy", "sad"]
    assert default_label_names(["mmew", "casme2"], ["others"]) == [
        "happiness",
        "disgust",
        "repression",
        "surprise",
        "others",
    ]


def test_plain_h5py_reads_label_names_and_phases_as_lists_of_str(tmp_path, inputs, project_params):
    import h5py

    _, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    with h5py.File(out, "r") as f:
        assert list(f.attrs["label_names"]) == ["happiness", "disgust", "repression", "surprise", "others"]
        assert list(f.attrs["phases"]) == ["full", "onset_apex", "apex_offset"]
        assert all(isinstance(name, str) for name in f.attrs["label_names"])
        assert f["subject"].asstr()[0] == "sub01" and f["images/full"][0].shape == (64, 64, 3)
    info = CliRunner().invoke(cli, ["cache", "info", str(out)])
    assert "label_names: happiness, disgust, repression, surprise, others" in info.output

    # a cache written before (JSON lists in string attributes) still reads
    with h5py.File(out, "r+") as f:
        f.attrs["label_names"] = '["happiness", "disgust", "repression", "surprise", "others"]'
        f.attrs["phases"] = '["full", "onset_apex", "apex_offset"]'
    data = read_dynamic_images(out)
    assert data.label_names[0] == "happiness" and data.phases == ["full", "onset_apex", "apex_offset"]
    assert CliRunner().invoke(cli, ["cache", "verify", str(out)]).exit_code == 0
    assert "happiness 1" in CliRunner().invoke(cli, ["cache", "info", str(out)]).output


def _many_subjects_cache(path):
    """Three subjects x three classes x two clips each, the table ordered by subject."""
    from tests.di_cache import write_dynamic_images

    rows = [(s, k, c) for s in ("sub01", "sub02", "sub03") for k in range(3) for c in range(2)]
    samples = {
        "sample_id": [f"casme2/{s}/EP{k}{c}" for s, k, c in rows],
        "dataset": ["casme2"] * len(rows),
        "subject": [s for s, _, _ in rows],
        "clip": [f"EP{k}{c}" for _, k, c in rows],
        "label": [k for _, k, _ in rows],
        "onset": [1] * len(rows),
        "apex": [3] * len(rows),
        "offset": [5] * len(rows),
        "apex_source": ["annotated"] * len(rows),
    }
    images = {p: np.zeros((len(rows), 16, 16, 3), np.uint8) for p in ("full", "onset_apex", "apex_offset")}
    write_dynamic_images(path, samples, images, ["happiness", "disgust", "surprise"], {})


def test_preview_shows_one_clip_per_class_and_subject(tmp_path):
    from pipeline.dynimg.preview import pick_samples

    cache = tmp_path / "di.h5"
    _many_subjects_cache(cache)
    data = read_dynamic_images(cache)
    shown = [(data.samples["subject"][i], int(data.samples["label"][i])) for i in pick_samples(data)]
    # every class and every subject, with as few clips: not the first subject's six
    assert sorted(shown) == [("sub01", 0), ("sub02", 1), ("sub03", 2)]
    every = [(data.samples["subject"][i], int(data.samples["label"][i])) for i in pick_samples(data, 20)]
    assert len(every) == 9 and len(set(every)) == 9  # one clip per (class, subject) pair
    assert [k for _, k in every] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # rows by class, then subject

    png = tmp_path / "preview.png"
    result = CliRunner().invoke(cli, ["cache", "preview", str(cache), "--out", str(png)])
    assert result.exit_code == 0 and "preview of 3 clips" in result.output, result.output
    result = CliRunner().invoke(
        cli,
        [
            "cache",
            "preview",
            str(cache),
            "--out",
            str(png),
            "--clips",
            "sub02/EP21,sub03/EP00",
            "--clips",
            "sub01/EP11",
        ],
    )
    assert result.exit_code == 0 and "preview of 3 clips" in result.output, result.output
    result = CliRunner().invoke(cli, ["cache", "preview", str(cache), "--out", str(png), "--clips", "sub04/EP00"])
    assert result.exit_code != 0 and "holds no clip sub04/EP00" in result.output


@pytest.mark.parametrize(
    "policy, dropped", [("widen", {}), ("drop", {"onset_apex": [3], "apex_offset": [3]}), ("keep", {})]
)
def test_degenerate_phase_policy_widen_drop_keep(tmp_path, inputs, project_params, policy, dropped):
    from pipeline.train.data import dropped_rows

    project_params["dynimg"]["degenerate"] = policy
    result, out = _dynimg(tmp_path, inputs, project_params, "--jobs", "1")
    assert result.exit_code == 0, result.output
    data = read_dynamic_images(out)
    record = json.loads(data.attrs["degenerate_phases"])
    assert (
        record["policy"] == policy
        and record["short"] == {"onset_apex": 1}
        and record["duplicate"] == {"apex_offset": 1}
    )
    assert record["dropped"] == {p: len(rows) for p, rows in dropped.items()}
    assert {p: rows.tolist() for p, rows in dropped_rows(data.attrs).items()} == dropped
    single = data.images["onset_apex"][3]
    if policy == "keep":  # one frame, not widened: no motion, a flat DI
        assert "widened within the clip" not in result.output
    else:
        assert not np.array_equal(single, single.min())


def test_images_compressed_by_the_workers_give_the_file_the_writer_would_write(tmp_path):
    """Phase and jittered DIs compressed in the workers (`encode_image`) and copied as chunks by the
    writer store the very chunks the writer stores when handed the images (only where HDF5 places
    them in the file differs); every chunk is a zlib stream of its image, which HDF5's deflate
    filter (any HDF5 reader) and Python's zlib inflate, and the images read back unchanged."""
    from pipeline.io.dynamic_image_cache import DynamicImageWriter, encode_image

    rng = np.random.default_rng(3)
    n, k, shape = 3, 2, (16, 12, 3)
    images = [{p: rng.integers(100, 160, shape, dtype=np.uint8) for p in ("full", "onset_apex")} for _ in range(n)]
    jitter = [{"onset_apex": list(rng.integers(90, 170, (k, *shape), dtype=np.uint8))} for _ in range(n)]
    samples = {field: [f"{field}{i}" for i in range(n)] for field in ("sample_id", "dataset", "subject", "clip")}
    samples |= {field: list(range(n)) for field in ("label", "onset", "apex", "offset")}
    samples["apex_source"] = ["annotated"] * n
    written = {}
    for mode in ("writer", "workers"):
        path = tmp_path / f"{mode}.h5"
        with DynamicImageWriter(path, n, ["full", "onset_apex"], ["a", "b", "c"], {}, jitter={"onset_apex": k}) as w:
            for sample, draws in zip(images, jitter):
                if mode == "writer":
                    w.add(sample, draws)
                else:
                    encoded = {phase: encode_image(image) for phase, image in sample.items()}
                    encoded_jitter = {phase: [encode_image(image) for image in d] for phase, d in draws.items()}
                    w.add(sample, draws, encoded, encoded_jitter)
            w.finish(samples)
        with h5py.File(path) as handle:
            written[mode] = {
                (name, chunk.chunk_offset): handle[name].id.read_direct_chunk(chunk.chunk_offset)
                for name in ("images/full", "images/onset_apex", "jitter/onset_apex")
                for chunk in (handle[name].id.get_chunk_info(i) for i in range(handle[name].id.get_num_chunks()))
            }
    assert len(written["workers"]) == 2 * n + n * k and written["writer"] == written["workers"]
    for (name, (i, *rest)), (filter_mask, chunk) in written["workers"].items():
        image = jitter[i]["onset_apex"][rest[0]] if name.startswith("jitter") else images[i][name.split("/")[1]]
        assert filter_mask == 0 and zlib.decompress(chunk) == image.tobytes()
    by_writer, by_workers = read_dynamic_images(tmp_path / "writer.h5"), read_dynamic_images(tmp_path / "workers.h5")
    assert np.array_equal(by_workers.jitter("onset_apex"), np.stack([d["onset_apex"] for d in jitter]))
    assert np.array_equal(by_workers.jitter("onset_apex"), by_writer.jitter("onset_apex"))


@pytest.mark.parametrize("where", ["images", "jitter"])
def test_the_writer_refuses_an_image_that_is_not_h_w_3(tmp_path, where):
    """A phase's DI or a jittered one of another shape than (H, W, 3) is refused before anything is
    written for it, naming its dataset."""
    from pipeline.io.dynamic_image_cache import DynamicImageWriter

    good, grey = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    sample = {"full": grey if where == "images" else good}
    draws = {"full": [grey if where == "jitter" else good] * 2}
    expected = rf"^{where}/full: an image of shape \(8, 8\), expected \(H, W, 3\)"
    with (
        DynamicImageWriter(tmp_path / "x.h5", 1, ["full"], ["a"], {}, jitter={"full": 2}) as writer,
        pytest.raises(ValueError, match=expected),
    ):
        writer.add(sample, draws)
