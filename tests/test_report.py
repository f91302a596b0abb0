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
