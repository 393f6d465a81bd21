"""The wheel installs one top-level name, ``unspur``: the repository's ``actors/``, ``workflows/``
and ``tune_spaces/`` go inside it, with the shipped YAML configs and the ``unspur`` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_package_folder() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == set(setuptools["packages"]), "add new package folders to [tool.setuptools] packages"


def test_the_wheel_holds_only_unspur_with_its_configs(tmp_path: Path) -> None:
    had_build = (ROOT / "build").exists()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    if not had_build:  # setuptools stages the build in the source tree
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("unspur-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"unspur", wheel.name.split("-py")[0] + ".dist-info"}
    shipped = {p.name for p in (ROOT / "workflows" / "configs").glob("*.yaml")}
    assert (
        shipped
        and {n.rsplit("/", 1)[-1] for n in names if n.startswith("unspur/workflows/configs/")} == shipped
    )
    assert "unspur/tune_spaces/cft.yaml" in names and "unspur/workflows/pipeline/job.py" in names
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt").decode()
    assert "unspur = unspur.workflows.cli:app" in entry
