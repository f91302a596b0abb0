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
