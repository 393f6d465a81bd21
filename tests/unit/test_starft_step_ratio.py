"""The StarFT/FLYP step-ratio benchmark runs on the current code (tiny CLIP, two repeats)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_starft_step_ratio_prints_its_result_line() -> None:
    start = time.perf_counter()
    args = [
        "--model",
        "unspur-tiny-clip",
        "--batch",
        "8",
        "--img-size",
        "32",
        "--repeats",
        "2",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "starft_step_ratio.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    keys = dict(item.split("=") for item in last.split())
    assert set(keys) == {"flyp_ms", "starft_ms", "ratio"}
    assert all(float(v) > 0 for v in keys.values())
    assert time.perf_counter() - start < 60
