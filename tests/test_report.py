"""`mer report`: the models x modes x datasets table with intervals and gains over the baseline."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from stages.cli import cli
from tests.conftest import write_params

SUBJECTS = [f"sub{i:02d}" for i in range(1, 7)]
LABELS = ["happiness", "disgust", "surprise"]


def _run(folder, model, mode, wrong_per_subject):
    """A run folder whose predictions miss `wrong_per_subject` of each subject's 3 clips."""
    folder.mkdir(parents=True)
    rows = []
    for subject in SUBJECTS:
        for i, label in enumerate(LABELS):
            predicted = LABELS[(i + 1) % 3] if i < wrong_per_subject else label
            rows.append(f"casme2/{subject}/EP{i:02d},casme2,{subject},{label},{predicted}\n")
    (folder / "predictions.csv").write_text("sample_id,dataset,subject,true_label,pred_label\n" + "".join(rows))
    info = {"model": model, "mode": mode, "label_names": LABELS, "folds": {s: {"n_test_samples": 3} for s in SUBJECTS}}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def _report(tmp_path, project_params, *runs):
    args = ["report", "--out", str(tmp_path / "results"), "--params", str(write_params(tmp_path, project_params))]
    for run in runs:
        args += ["--run", str(run)]
    return CliRunner().invoke(cli, args)


def test_report_tabulates_modes_with_gains_and_intervals(tmp_path, project_params):
    runs = [
        _run(tmp_path / "casme2-learnet-baseline", "learnet", "baseline", 1),
        _run(tmp_path / "casme2-learnet-dual_phase", "learnet", "dual_phase", 0),
        _run(tmp_path / "casme2-resnet18-baseline", "resnet18", "baseline", 2),
    ]
    result = _report(tmp_path, project_params, *runs)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "results" / "results.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    learnet = rows["learnet"]
    assert float(learnet["baseline_accuracy"]) == pytest.approx(2 / 3)
    assert float(learnet["dual_phase_accuracy"]) == 1.0
    assert float(learnet["dual_phase_accuracy_gain"]) == pytest.approx(1 / 3)
    assert float(learnet["dual_phase_accuracy_gain_rel"]) == pytest.approx(0.5)
    assert float(learnet["dual_phase_accuracy_gain_p"]) == 0  # better on every subject
    # every subject scores 2/3, so resampling subjects cannot move the baseline
    assert float(learnet["baseline_accuracy_low"]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(learnet["baseline_accuracy_high"]) == pytest.approx(2 / 3, abs=1e-6)
    assert rows["resnet18"]["dual_phase_accuracy"] == ""  # a cell that was not run stays empty
    table = (tmp_path / "results" / "results.md").read_text()
    assert "| casme2 | learnet | 66.7 [66.7, 66.7]" in table and "+33.3 pt (+50.0 %)" in table
    assert (tmp_path / "results" / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_two_runs_of_the_same_cell_are_refused(tmp_path, project_params):
    a = _run(tmp_path / "a", "learnet", "baseline", 0)
    b = _run(tmp_path / "b", "learnet", "baseline", 1)
    result = _report(tmp_path, project_params, a, b)
    assert result.exit_code != 0 and "both ('casme2', 'learnet', 'baseline')" in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_fold", "fold sub06: 0 predictions, run.json expects 3"),
        ("extra_rows", "fold sub01: 4 predictions, run.json expects 3"),
        ("fold_of_another_subject", "fold sub02: {run}/folds/sub02/predictions.csv holds 1 row(s) of subject(s) sub01"),
    ],
)
def test_report_refuses_what_evaluate_refuses(tmp_path, project_params, damage, message):
    """`mer report` runs evaluate's checks on every run (one shared function)."""
    good = _run(tmp_path / "casme2-learnet-baseline", "learnet", "baseline", 1)
    run = _run(tmp_path / "casme2-learnet-dual_phase", "learnet", "dual_phase", 0)
    predictions = run / "predictions.csv"
    lines = predictions.read_text().splitlines(keepends=True)
    if damage == "missing_fold":
        predictions.write_text("".join(line for line in lines if ",sub06," not in line))
    elif damage == "extra_rows":
        predictions.write_text("".join(lines) + "casme2/sub01/EP09,casme2,sub01,happiness,happiness\n")
    else:  # fold folders as `mer train` writes them, with one of sub01's clips in sub02's fold
        for subject in SUBJECTS:
            fold = run / "folds" / subject
            fold.mkdir(parents=True)
            others = [s for s in SUBJECTS if s != subject]
            manifest = {"held_out_subject": subject, "trained_on_subjects": others}
            (fold / "manifest.json").write_text(json.dumps(manifest))
            rows = [line for line in lines[1:] if f",{subject}," in line]
            if subject == "sub01":
                stray, rows = rows[0], rows[1:]
            if subject == "sub02":
                rows.append(stray)
            (fold / "predictions.csv").write_text(lines[0] + "".join(rows))
    result = _report(tmp_path, project_params, good, run)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message.format(run=run) in result.output, result.output
    assert not (tmp_path / "results").exists()


FIVE = ["happiness", "disgust", "repression", "surprise", "others"]


def _five_class_run(folder, model, mode, collapsed):
    """A run over five classes, one clip each per subject: `collapsed` predicts happiness for every
    clip (a collapsed or undertrained model), else all but the first clip are right."""
    folder.mkdir(parents=True)
    rows = []
    for subject in SUBJECTS:
        for i, label in enumerate(FIVE):
            predicted = "happiness" if collapsed else FIVE[(i + 1) % 5] if i == 0 else label
            rows.append(f"casme2/{subject}/EP{i:02d},casme2,{subject},{label},{predicted}\n")
    (folder / "predictions.csv").write_text("sample_id,dataset,subject,true_label,pred_label\n" + "".join(rows))
    info = {"model": model, "mode": mode, "label_names": FIVE, "folds": {s: {"n_test_samples": 5} for s in SUBJECTS}}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def test_report_survives_a_model_predicting_one_class_for_every_clip(tmp_path, project_params):
    runs = [
        _five_class_run(tmp_path / "casme2-mobilenetv3-baseline", "mobilenetv3", "baseline", collapsed=True),
        _five_class_run(tmp_path / "casme2-mobilenetv3-dual_phase", "mobilenetv3", "dual_phase", collapsed=False),
    ]
    result = _report(tmp_path, project_params, *runs)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "results" / "results.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    # F1 of happiness is 2 * (1/5) / (1 + 1/5) = 1/3, of the others 0
    for metric, value in (("accuracy", 1 / 5), ("uf1", 1 / 15), ("uar", 1 / 5)):
        # every subject scores the same, so the interval is exactly the value
        assert float(row[f"baseline_{metric}"]) == pytest.approx(value, abs=1e-6)
        assert float(row[f"baseline_{metric}_low"]) == float(row[f"baseline_{metric}"])
        assert float(row[f"baseline_{metric}_high"]) == float(row[f"baseline_{metric}"])
    assert (tmp_path / "results" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| casme2 | mobilenetv3 | 20.0 [20.0, 20.0]" in (tmp_path / "results" / "results.md").read_text()


MODELS = ["resnet18", "resnet50", "vgg16_bn", "mobilenetv3_large_100", "vit_base_patch16_224", "learnet"]
MODES = ["baseline", "spatial", "dual_phase", "dual_phase_spatial"]


def _rows(models, modes, datasets=("casme2",)):
    rows = []
    for d, dataset in enumerate(datasets):
        for m, model in enumerate(models):
            row = {"dataset": dataset, "model": model, "n_clips": 30, "n_classes": 5}
            for i, mode in enumerate(modes):
                for metric in ("accuracy", "uf1", "uar"):
                    value = 0.2 + 0.05 * ((d + m + i) % 10)
                    row[f"{mode}_{metric}"] = value
                    row[f"{mode}_{metric}_low"], row[f"{mode}_{metric}_high"] = value - 0.1, value + 0.1
            rows.append(row)
    return rows


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:4] == b"\x89PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_the_chart_of_six_models_and_four_modes_is_sized_to_its_bars(tmp_path):
    import matplotlib.pyplot as plt

    from pipeline.evaluate.report import bar_chart, results_figure

    bar_chart(_rows(["learnet"], ["baseline", "dual_phase"]), "baseline", tmp_path / "small.png", 0.95)
    bar_chart(_rows(MODELS, MODES), "baseline", tmp_path / "six.png", 0.95)
    bar_chart(_rows(MODELS, MODES, ("casme2", "samm")), "baseline", tmp_path / "twelve.png", 0.95)
    assert plt.get_fignums() == []  # bar_chart closes its figure
    small, six, twelve = (_png_size(tmp_path / f"{n}.png")[0] for n in ("small", "six", "twelve"))
    assert small < six < twelve

    figure = results_figure(_rows(MODELS, MODES, ("casme2", "samm")), "baseline", 0.95)
    try:
        bottom = figure.axes[2]
        labels = [tick.get_text() for tick in bottom.get_xticklabels()]
        assert len(labels) == 12 and "mobilenetv3_\nlarge_100\ncasme2" in labels  # wrapped, dataset below
        assert all(max(len(line) for line in label.split("\n")) <= 13 for label in labels)
        # the groups are wide enough for the wrapped labels: no rotation needed, and none overlap
        figure.canvas.draw()
        boxes = [tick.get_window_extent() for tick in bottom.get_xticklabels()]
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))
        for axis in figure.axes[:3]:  # a chance line at 1/5 in each panel
            assert any(list(line.get_ydata()) == [20.0, 20.0] for line in axis.get_lines())
        assert figure.legends and "chance (1/5)" in [t.get_text() for t in figure.legends[0].get_texts()]
        assert "casme2, samm" in figure.axes[0].get_title()
    finally:
        plt.close(figure)


def test_long_labels_of_narrow_groups_are_rotated():
    import matplotlib.pyplot as plt

    from pipeline.evaluate.report import results_figure

    figure = results_figure(_rows(["a_very_long_model_name_without_breaks" * 2, "b"], ["baseline"]), "baseline")
    try:
        assert all(tick.get_rotation() == 30 for tick in figure.axes[2].get_xticklabels())
    finally:
        plt.close(figure)
