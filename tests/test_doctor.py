"""`mer doctor` reports what is in place and what to fix."""

from __future__ import annotations

from click.testing import CliRunner

from stages.cli import cli
from tests.conftest import write_params


def test_doctor_passes_on_this_installation(tmp_path, project_params):
    params = write_params(tmp_path, project_params)
    result = CliRunner().invoke(cli, ["doctor", "--cache", str(tmp_path / "cache"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "ok    landmark model" in result.output and "ok    torch" in result.output and "ok    dvc" in result.output


def test_doctor_names_each_problem_and_its_fix(tmp_path, project_params):
    del project_params["dynimg"]
    params = write_params(tmp_path, project_params)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    result = CliRunner().invoke(cli, ["doctor", "--cache", str(blocked / "cache"), "--params", str(params)])
    assert result.exit_code != 0
    assert "FAIL  cache folder" in result.output and "fix: make" in result.output
    assert "FAIL  params" in result.output and "lacks section(s) dynimg" in result.output
    assert "2 check(s) failed" in result.output


def test_doctor_names_every_problem_of_the_params_file(tmp_path, project_params):
    project_params["align"]["eye_distanse"] = 0.5
    project_params["dynimg"]["varient"] = "linear"
    project_params["report"]["reference_mode"] = "basline"
    project_params["train"]["test_fusion"] = "false"
    project_params["evaluate"]["bootstrap"] = -10
    params = write_params(tmp_path, project_params)
    result = CliRunner().invoke(cli, ["doctor", "--cache", str(tmp_path / "cache"), "--params", str(params)])
    assert result.exit_code != 0
    assert "FAIL  params" in result.output and "has 5 problem(s)" in result.output
    for line in (
        "align.eye_distanse = 0.5: unknown key; did you mean eye_distance?",
        "dynimg.varient = 'linear': unknown key; did you mean variant?",
        "report.reference_mode = 'basline': allowed: 'baseline'",
        "train.test_fusion = 'false': must be true or false",
        "evaluate.bootstrap = -10: must be greater than or equal to 0",
    ):
        assert line in result.output
    assert "1 check(s) failed" in result.output


def test_doctor_outside_a_project_says_the_defaults_apply_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ok    params: no params.yaml here: the stages use the built-in defaults" in result.output
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(cli, ["doctor", "--params", "params.yaml"])  # given explicitly: must exist
    assert result.exit_code != 0 and "FAIL  params: params.yaml not found" in result.output
