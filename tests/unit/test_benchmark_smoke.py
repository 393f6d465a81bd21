"""The benchmarks run on the current code (tiny sizes): they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _result_line(script: str, args: list[str]) -> dict[str, str]:
    """Run ``benchmarks/<script>`` with ``args``; its last line's ``key=value`` items."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(item.split("=") for item in done.stdout.strip().splitlines()[-1].split())


def test_cft_effect_prints_its_result_line() -> None:
    tiny = ["base.train.epochs=1", "cft.train.epochs=1", "base.data.spuriousworld.n_train=200"]
    tiny += ["base.data.spuriousworld.n_val=40", "base.data.spuriousworld.n_test=40", "--threads", "1"]
    keys = _result_line("cft_effect.py", ["--seeds", "1", *tiny])
    assert {"acc_base", "wga_base", "acc_cft", "wga_cft", "acc_control", "wga_control"} <= set(keys)
    assert all(0.0 <= float(keys[k]) <= 1.0 for k in ("acc_base", "wga_cft", "acc_control"))


def test_seraser_cache_prints_its_result_line() -> None:
    tiny = [
        "--model",
        "unspur-tiny-clip",
        "--img-size",
        "32",
        "--images",
        "2",
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    keys = _result_line("seraser_cache.py", tiny)
    assert float(keys["speedup"]) > 0 and keys["same_predictions"] == "True"


def test_starft_effect_prints_its_result_line() -> None:
    tiny = [f"pretrain_data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("image_size", 32))]
    tiny += [f"data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("n_val", 16), ("n_test", 16))]
    tiny += ["data.spuriousworld.image_size=32", "pretrain.model.img_size=32", "pretrain.train.batch_size=32"]
    tiny += ["pretrain.train.epochs=1", "flyp.train.epochs=2", "flyp.train.batch_size=16", "--threads", "1"]
    keys = _result_line("starft_effect.py", ["--seeds", "1", "--split", "val", *tiny])
    expected = {f"{m}_{n}" for n in ("zs", "flyp", "wise", "starft") for m in ("acc", "wga")}
    assert set(keys) == expected
    assert all(0.0 <= float(v) <= 1.0 for v in keys.values())


def test_ravl_discovery_prints_its_result_line() -> None:
    tiny = ["--values", "0.9", "pretrain_data.digits_grid.n_train=128", "pretrain.train.epochs=1"]
    tiny += ["data.digits_grid.n_train=96", "data.digits_grid.n_val=48", "data.digits_grid.n_test=48"]
    keys = _result_line("ravl_discovery.py", [*tiny, "flyp.train.epochs=1"])
    assert set(keys) == {"p10_v09", "p10_image_v09"} and all(0.0 <= float(v) <= 1.0 for v in keys.values())


def test_ravl_mitigation_prints_its_result_line() -> None:
    tiny = ["--seeds", "1", "pretrain_data.digits_grid.n_train=128", "pretrain.train.epochs=1"]
    tiny += ["data.digits_grid.n_train=96", "data.digits_grid.n_val=48", "data.digits_grid.n_test=48"]
    keys = _result_line("ravl_mitigation.py", [*tiny, "flyp.train.epochs=1"])
    assert set(keys) == {"acc_ft", "wga_ft", "acc_ravl", "wga_ravl"}
