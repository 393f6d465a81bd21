"""The effect benchmark runs on the current code (a tiny world, one epoch each): it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cft_effect_prints_its_result_line() -> None:
    tiny = ["base.train.epochs=1", "cft.train.epochs=1", "base.data.spuriousworld.n_train=200"]
    tiny += ["base.data.spuriousworld.n_val=40", "base.data.spuriousworld.n_test=40", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cft_effect.py"), "--seeds", "1", *tiny],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    keys = dict(item.split("=") for item in last.split())
    assert {"acc_base", "wga_base", "acc_cft", "wga_cft", "acc_control", "wga_control"} <= set(keys)
    assert all(0.0 <= float(keys[k]) <= 1.0 for k in ("acc_base", "wga_cft", "acc_control"))
