"""The settings layer (pipeline/config.py): every section validated strictly, one message per problem.

Most cases call the validation directly; a few run `mer` end to end (options, running outside a
project).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.config import (
    ALIGN_METHODS,
    ALIGN_ON_ERROR,
    BUILTIN_SECTIONS,
    DI_VARIANTS,
    MAPPING_SECTIONS,
    SECTIONS,
    Params,
    builtin_section,
    load_params,
    section_problems,
    validate_params,
)
from pipeline.errors import SettingsError
from stages.cli import cli
from tests.conftest import write_params


def problems_with(params: dict) -> str:
    return "\n".join(validate_params(params, "params.yaml"))


# --------------------------------------------------------------------------------------------
# The defaults are the project's params.yaml


def test_project_params_are_valid_and_equal_the_builtin_defaults(project_params):
    assert validate_params(project_params, "params.yaml") == []
    assert sorted(project_params) == sorted(SECTIONS)
    for name, model in SECTIONS.items():
        if name in MAPPING_SECTIONS:
            assert project_params[name] == BUILTIN_SECTIONS[name]
        else:
            assert model.model_validate(project_params[name]) == model(), name
            assert builtin_section(name).keys() >= project_params[name].keys(), name
    assert validate_params({name: builtin_section(name) for name in SECTIONS}, "defaults") == []


def test_choices_agree_with_the_modules_that_use_them():
    from pipeline.align.clip import METHODS
    from pipeline.align.dataset import ON_ERROR
    from pipeline.config.sections import APEX_OUTSIDE, FRAME_ORDER
    from pipeline.datasets import coding
    from pipeline.dynimg.rank_pooling import VARIANTS

    assert tuple(ON_ERROR) == ALIGN_ON_ERROR and tuple(METHODS) == ALIGN_METHODS and tuple(VARIANTS) == DI_VARIANTS
    assert coding.APEX_OUTSIDE == APEX_OUTSIDE and coding.FRAME_ORDER == FRAME_ORDER


# --------------------------------------------------------------------------------------------
# Unknown keys, in every section, with a did-you-mean


@pytest.mark.parametrize(
    "path, typo, meant",
    [
        (("align",), "eye_distanse", "eye_distance"),
        (("dynimg",), "varient", "variant"),
        (("annotate",), "on_problm", "on_problem"),
        (("report",), "referense_mode", "reference_mode"),
        (("demo",), "presett", "preset"),
        (("train",), "epoch", "epochs"),
        (("train", "augment"), "rotate", "rotation"),
        (("evaluate",), "bootstap", "bootstrap"),
        (("experiment",), "mdoes", "modes"),
        (("datasets", "casme2"), "clases", "classes"),
        (("models", "learnet"), "input_sise", "input_size"),
    ],
)
def test_a_misspelled_key_is_named_with_a_did_you_mean(project_params, path, typo, meant):
    section = project_params
    for part in path:
        section = section[part]
    section[typo] = 1
    message = problems_with(project_params)
    assert f"params.yaml: {'.'.join(path)}.{typo} = 1: unknown key; did you mean {meant}?" in message


def test_a_misspelled_section_is_named_too(project_params):
    project_params["evalute"] = project_params.pop("evaluate")
    message = problems_with(project_params)
    assert "evalute: unknown section; did you mean evaluate?" in message and "lacks section(s) evaluate" in message


# --------------------------------------------------------------------------------------------
# Types are not coerced; ranges and choices are named


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "test_fusion", "false", "train.test_fusion = 'false': must be true or false, got a str"),
        ("evaluate", "confusion_normalize", "yes", "must be true or false"),
        ("train", "epochs", 1.9, "train.epochs = 1.9: must be a whole number, got a float"),
        ("train", "epochs", 0, "train.epochs = 0: must be greater than or equal to 1"),
        ("align", "size", 100.7, "align.size = 100.7: must be a whole number, got a float"),
        ("align", "size", "224", "align.size = '224': must be a whole number, got a str (write it without quotes)"),
        ("train", "lr", "1e-3", "train.lr = '1e-3': must be a number, got a str (YAML reads 1e-3 as text: write it"),
        ("evaluate", "bootstrap", -10, "evaluate.bootstrap = -10: must be greater than or equal to 0"),
        ("report", "bootstrap", -10, "report.bootstrap = -10: must be greater than or equal to 0"),
        (
            "report",
            "reference_mode",
            "basline",
            "report.reference_mode = 'basline': allowed: 'baseline', 'baseline_steps', 'spatial'",
        ),
        ("evaluate", "confidence", 95, "evaluate.confidence = 95: must be less than 1"),
        ("dynimg", "variant", "linaer", "dynimg.variant = 'linaer': allowed: 'harmonic' or 'linear'"),
        ("demo", "jobs", 0, "demo.jobs = 0: must be greater than or equal to 1"),
        ("train", "threads", 1.5, "threads must be auto or a number"),
        ("train", "train_phases", [], "train.train_phases = []: List should have at least 1 item"),
        ("experiment", "modes", [], "experiment.modes = []: List should have at least 1 item"),
        ("experiment", "modes", ["dual"], "experiment.modes.0 = 'dual': allowed: 'baseline'"),
        ("annotate", "on_problem", "skip", "annotate.on_problem = 'skip': allowed: 'fail' or 'drop'"),
    ],
)
def test_wrong_types_ranges_and_choices(project_params, section, key, value, message):
    project_params[section][key] = value
    assert message in problems_with(project_params)


def test_an_int_is_a_number_but_a_bool_is_not(project_params):
    _, problems = section_problems("train", {**project_params["train"], "lr": 1, "weight_decay": 0})
    assert problems == []
    _, problems = section_problems("align", {"eye_distance": True})
    assert problems == ["align.eye_distance = True: must be a number, got a bool"]


@pytest.mark.parametrize(
    "phases, message",
    [
        ({}, "dynimg.phases = {}: is empty: give at least one phase"),
        (None, "dynimg.phases = None: must be a mapping of phase names"),
        ({"full": ["onset", "top"]}, "phase bound 'top' must be onset, apex or offset"),
        ({"full": ["onset", 3]}, "phase 'full' must be a [start, end] pair of anchors"),
        ({"full": ["onset", "offset", "apex"]}, "must be a [start, end] pair"),
    ],
)
def test_phases_given_empty_or_with_a_bad_anchor(project_params, phases, message):
    project_params["dynimg"]["phases"] = phases
    assert message in problems_with(project_params)


def test_shifted_anchors_are_accepted(project_params):
    project_params["dynimg"]["phases"] = {"full": ["onset", "offset"], "rise": ["onset+2", "apex-1"]}
    project_params["experiment"]["modes"] = ["baseline"]
    project_params["report"]["reference_mode"] = "baseline"
    assert problems_with(project_params) == ""


def test_sections_are_checked_against_each_other(project_params):
    project_params["dynimg"]["phases"] = {"full": ["onset", "offset"]}
    project_params["experiment"]["datasets"] = ["casme2", "smm"]
    project_params["report"]["reference_mode"] = "spatial"
    message = problems_with(project_params)
    assert "experiment.datasets = ['smm']: not in the datasets section (casme2, samm)" in message
    assert (
        "report.reference_mode = 'spatial': not one of experiment.modes (baseline, baseline_steps, dual_phase)"
        in message
    )
    assert "dynimg.phases lacks apex_offset, onset_apex, which learnet dual_phase (experiment) trains" in message


def test_several_problems_come_in_one_message(project_params):
    params = Params(Path("p.yaml"), project_params)
    project_params["align"].update(size=100.7, eye_distanse=0.5, method="warp")
    with pytest.raises(SettingsError) as info:
        params.section("align")
    assert str(info.value).startswith("p.yaml: invalid align settings (3 problems):")
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------------
# End to end: options, running outside a project


def test_a_bad_option_value_is_named_by_its_flag(tmp_path, project_params):
    params = write_params(tmp_path, project_params)
    result = CliRunner().invoke(cli, ["demo-data", "--out", str(tmp_path / "out"), "--jobs", "0", "--params", params])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        "invalid demo settings" in result.output and "demo.jobs = 0 (option --jobs): must be greater" in result.output
    )
    assert not (tmp_path / "out").exists()


def test_a_misspelled_key_stops_align_before_any_work(tmp_path, project_params):
    project_params["align"]["eye_distanse"] = 0.5
    result = CliRunner().invoke(
        cli,
        ["align", "--dataset", "casme2", "--root", str(tmp_path), "--out", str(tmp_path / "a.h5")]
        + ["--params", str(write_params(tmp_path, project_params))],
    )
    assert (
        result.exit_code == 1 and "align.eye_distanse = 0.5: unknown key; did you mean eye_distance?" in result.output
    )
    assert not (tmp_path / "a.h5").exists()


def test_demo_data_runs_outside_a_project_with_the_builtin_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["demo-data", "--out", "X", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.output.count("using the built-in defaults") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]
    assert sorted(p.name for p in (tmp_path / "X").iterdir()) == ["casme2", "samm"]


def test_an_explicit_params_file_that_does_not_exist_stays_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["demo-data", "--out", "X", "--params", "params.yaml"])
    assert result.exit_code == 1 and "params file not found: params.yaml" in result.output
    assert list(tmp_path.iterdir()) == []


def test_set_lays_any_key_over_the_params_and_reads_values_as_yaml(tmp_path, project_params):
    params = load_params(write_params(tmp_path, project_params)).with_assignments(
        ["train.epochs=5", "dynimg.phases.onset_apex=[onset, apex-1]", "models.learnet.input_size=96"]
    )
    assert params.section("train").epochs == 5
    assert params.section("dynimg").phases["onset_apex"] == ["onset", "apex-1"]
    assert params.section("dynimg").phases["full"] == ["onset", "offset"]  # the rest of the mapping stays
    assert params.data["models"]["learnet"]["input_size"] == 96
    assert project_params["train"]["epochs"] != 5  # the file's data is not modified
    builtin = load_params(tmp_path / "absent.yaml", explicit=False).with_assignments(["demo.preset=tiny"])
    assert builtin.section("demo").preset == "tiny" and builtin.section("demo").seed == 7


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("align.eye_distanse=0.5", "align.eye_distanse = 0.5: unknown key; did you mean eye_distance?"),
        ("trian.epochs=5", "unknown section 'trian'; did you mean train?"),
        ("train.epochs=1.9", "train.epochs = 1.9"),
        ("train.epochs", "write SECTION.KEY=VALUE"),
        ("train.test_fusion='false'", "train.test_fusion = 'false'"),
    ],
)
def test_set_is_validated_like_the_file_on_every_stage(tmp_path, project_params, assignment, message):
    """`--set` of a section the stage does not read is checked too: a typo never passes silently."""
    result = CliRunner().invoke(
        cli,
        ["align", "--dataset", "casme2", "--root", str(tmp_path), "--out", str(tmp_path / "a.h5")]
        + ["--params", str(write_params(tmp_path, project_params)), "--set", assignment],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output, result.output
    assert not (tmp_path / "a.h5").exists()
