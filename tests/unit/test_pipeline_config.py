"""Pipeline stage lists: ``${stage.output}`` references, ``extends`` / ``replace``, and stage
sections folded in from YAML or dotted overrides."""

from __future__ import annotations

import pytest

from unspur.config import ConfigError, validate_config
from unspur.config.pipeline import PipelineConfig, references, resolve

OUTPUTS = {
    "data": {"images": "/o/data/images", "classes": ["bird", "tree"], "num_classes": 2},
    "cft": {"config": {"loss": {"name": "cft", "lambda_kl": 1.0}, "run": {"name": "cft", "eval_every": 5}}},
}


def test_a_whole_reference_keeps_its_type_and_a_partial_one_is_formatted() -> None:
    assert resolve("${data.num_classes}", OUTPUTS, "s") == 2
    assert resolve({"names": "${data.classes}"}, OUTPUTS, "s") == {"names": ["bird", "tree"]}
    assert resolve(["${data.images}/x", 3], OUTPUTS, "s") == ["/o/data/images/x", 3]
    assert resolve("${cft.config.run.eval_every}", OUTPUTS, "s") == 5
    assert references({"a": ["${data.images}"], "b": "x ${cft.config} y"}) == ["data.images", "cft.config"]


def test_extends_merges_deeply_and_replace_swaps_a_section() -> None:
    merged = resolve({"extends": "${cft.config}", "run": {"name": "control"}}, OUTPUTS, "s")
    assert merged["run"] == {"name": "control", "eval_every": 5} and merged["loss"]["lambda_kl"] == 1.0
    swapped = resolve(
        {"extends": "${cft.config}", "replace": ["loss"], "loss": {"name": "erm"}}, OUTPUTS, "s"
    )
    assert swapped["loss"] == {"name": "erm"} and swapped["run"]["eval_every"] == 5
    assert OUTPUTS["cft"]["config"]["run"]["name"] == "cft"  # the extended config is not mutated


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${nope.x}", "'nope', which is not an earlier stage; earlier stages: ['data', 'cft']"),
        ("${data.parts}", "'data' has no key 'parts'; it has ['classes', 'images', 'num_classes']"),
        ({"extends": "${data.images}"}, "extends must refer to a mapping"),
        ({"replace": ["loss"]}, "replace lists keys of an extended config"),
    ],
)
def test_bad_references_name_the_stage_and_what_exists(value, message) -> None:
    with pytest.raises(ValueError, match="stage 'x'") as err:
        resolve(value, OUTPUTS, "stage 'x'")
    assert message in str(err.value)


def _pipeline(**sections) -> dict:
    stages = [
        {"name": "data", "job": "synth"},
        {"name": "cft", "job": "finetune", "config": {"train": {"lr": 1}}},
    ]
    return {"stages": stages, **sections}


def test_stage_sections_fold_into_their_stage() -> None:
    cfg = validate_config(PipelineConfig, _pipeline(cft={"train": {"epochs": 3}, "enabled": False}))
    cft = cfg.stages[1]
    assert cft.config == {"train": {"lr": 1, "epochs": 3}} and cft.enabled is False


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_pipeline(cfx={"train": {}}), "cfx: unknown key"),
        ({"stages": [{"name": "a", "job": "synth"}, {"name": "a", "job": "synth"}]}, "repeated: ['a']"),
        ({"stages": [{"name": "Bad-Name", "job": "synth"}]}, "stages.0.name"),
        (_pipeline(evaluate={"models": {"base": "b"}}), "evaluate.models names ['base']"),
        ({"stages": []}, "stages"),
    ],
)
def test_bad_pipelines_are_refused_by_key(data, message) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(PipelineConfig, data, "p.yaml")
    assert message in str(err.value)


def test_the_report_states_which_measured_band_the_baseline_falls_in() -> None:
    from unspur.workflows.pipeline.report import regime_line

    stages = [{"name": n, "job": "finetune", "config": {}} for n in ("base", "cft")]
    models = {"evaluate": {"models": {"base": "base", "cft": "CFT"}}}
    bands = [{"max_base_wga": 0.3, "note": "leans on the shortcut"}, {"max_base_wga": 1.0, "note": "robust"}]
    cfg = PipelineConfig(
        stages=stages, report={"gain": {"method": "cft", "baseline": "base", "regimes": bands}}, **models
    )
    line = regime_line(cfg, {"base": {"wga": 0.25}, "cft": {"wga": 0.5}})
    assert line == "Where base sits: test wga 0.250 (<= 0.3): leans on the shortcut"
    assert regime_line(cfg, {"base": {"wga": 0.3}}).endswith("leans on the shortcut")
    assert regime_line(cfg, {"base": {"wga": 0.31}}).endswith("robust")
    assert regime_line(cfg, {"cft": {"wga": 0.5}}) is None  # no baseline result: nothing to place
    with pytest.raises(ValueError, match="max_base_wga must increase band by band, got \\[1.0, 0.3\\]"):
        PipelineConfig(
            stages=stages,
            report={"gain": {"method": "cft", "baseline": "base", "regimes": bands[::-1]}},
            **models,
        )
