"""Params files that are missing, incomplete, mistyped or out of range: one clear message, exit 1."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stages.cli import cli
from tests.conftest import write_params


def _align(tmp_path, params_path):
    root = tmp_path / "data"
    (root / "sub01" / "EP01_01").mkdir(parents=True)
    return CliRunner().invoke(
        cli,
        [
            "align",
            "--dataset",
            "casme2",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "a.h5"),
            "--params",
            str(params_path),
        ],
    )


def test_missing_params_file(tmp_path):
    result = _align(tmp_path, tmp_path / "nowhere.yaml")
    assert result.exit_code == 1 and "params file not found" in result.output and "nowhere.yaml" in result.output


def test_params_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("align: [unclosed\n")
    result = _align(tmp_path, bad)
    assert result.exit_code == 1 and "is not valid YAML" in result.output


def test_missing_section(tmp_path, project_params):
    del project_params["align"]
    result = _align(tmp_path, write_params(tmp_path, project_params))
    assert result.exit_code == 1 and "has no 'align' section" in result.output


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("align", "size", "big", "align.size = 'big': must be a whole number"),
        ("align", "eye_distance", 1.5, "align.eye_distance = 1.5: must be less than 1"),
        ("dynimg", "size", 2, "dynimg.size = 2: must be greater than or equal to 8"),
        ("dynimg", "variant", "mean", "dynimg.variant = 'mean': allowed: 'harmonic' or 'linear'"),
        ("dynimg", "normalize", "sometimes", "allowed: 'global' or 'per_channel'"),
        ("dynimg", "min_phase_frames", 0, "dynimg.min_phase_frames = 0: must be greater than or equal to 1"),
        ("dynimg", "phases", {"full": ["onset"]}, "must be a [start, end] pair"),
    ],
)
def test_values_out_of_range_or_of_the_wrong_type(tmp_path, project_params, section, key, value, message):
    project_params[section][key] = value
    params = write_params(tmp_path, project_params)
    if section == "align":
        result = _align(tmp_path, params)
    else:
        result = CliRunner().invoke(
            cli,
            [
                "dynimg",
                "--aligned",
                str(tmp_path / "a.h5"),
                "--samples",
                str(tmp_path / "s.csv"),
                "--out",
                str(tmp_path / "d.h5"),
                "--params",
                str(params),
            ],
        )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not list(tmp_path.glob("*.h5"))
