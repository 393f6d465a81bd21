"""Every shipped YAML config loads through its config model (new files are picked up by glob).

Convention: a config under ``workflows/configs/`` is named ``<...>_<job>_<...>.yaml`` where the
first ``_``-separated token that names a job package ``workflows/<job>/job.py`` picks the module, and
that module's ``CONFIG`` is the model (``masks_synth.yaml`` -> ``unspur.workflows.masks.CONFIG``,
``cft_pipeline.yaml`` -> ``unspur.workflows.pipeline.CONFIG``). Search spaces under ``tune_spaces/``
load through ``unspur.tune_spaces.load_space``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from unspur.config import load_config

ROOT = Path(__file__).resolve().parents[2]
JOB_CONFIGS = sorted(p for ext in ("*.yaml", "*.yml") for p in (ROOT / "workflows" / "configs").glob(ext))
SPACES = sorted(p for ext in ("*.yaml", "*.yml") for p in (ROOT / "tune_spaces").glob(ext))


def job_module_for(path: Path) -> ModuleType | None:
    """The job module a config file belongs to, by the naming convention above (None: no match)."""
    for token in path.stem.split("_"):
        if (
            token.isidentifier()
            and not token.startswith("_")
            and (ROOT / "workflows" / token / "job.py").is_file()
        ):
            module = importlib.import_module(f"unspur.workflows.{token}")
            if hasattr(module, "CONFIG"):
                return module
    return None


def test_configs_are_found():
    assert JOB_CONFIGS, "no YAML under workflows/configs/"


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config_validates(path):
    module = job_module_for(path)
    assert module is not None, (
        f"{path.name}: no token of its name names a job module with CONFIG in workflows/; "
        "name it <job>_<variant>.yaml (e.g. finetune_cft.yaml)"
    )
    assert "out" in module.CONFIG.model_fields, f"{module.__name__}.CONFIG has no top-level 'out' field"
    cfg = load_config(module.CONFIG, path)
    assert isinstance(cfg, module.CONFIG)
    if module.__name__.endswith(".pipeline"):  # a stage list: every stage validates against its job
        assert module.build(cfg), f"{path.name}: no stage planned"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_search_space_validates(path):
    from unspur.tune_spaces import SearchSpace, load_space

    assert isinstance(load_space(path), SearchSpace)


def test_convention_maps_names():
    assert job_module_for(Path("masks_synth.yaml")).__name__ == "unspur.workflows.masks"
    assert job_module_for(Path("example_synth_digits.yaml")).__name__ == "unspur.workflows.synth"
    assert job_module_for(Path("no_such_job.yaml")) is None
