"""``benchmarks/gpu_real_size.py --tiny`` runs every figure's code path on a CPU and prints each
expected ``key=value`` line once, without importing ray, mlflow, pandas or pyarrow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_real_size.py"
NUMBERS = [
    "grounded_sam_build_s",
    "sam_encode_fp32_img_per_s",
    "sam_encode_bf16_img_per_s",
    "sam_concepts_boxes_1",
    "sam_concepts_boxes_16",
    "sam_concepts_1_ms",
    "sam_concepts_16_ms",
    "sam_concepts_ratio",
    "grounded_sam_b1_img_per_s",
    "grounded_sam_b4_img_per_s",
    "grounded_sam_b16_img_per_s",
    "erm_step_ms",
    "erm_img_per_s",
    "cft_step_ms",
    "cft_img_per_s",
    "cft_erm_ratio",
    "flyp_step_ms",
    "flyp_img_per_s",
    "starft_step_ms",
    "starft_img_per_s",
    "starft_flyp_ratio",
]
PEAKS = [
    "sam_encode_fp32_peak_mem_gb",
    "sam_encode_bf16_peak_mem_gb",
    "sam_concepts_peak_mem_gb",
    "grounded_sam_peak_mem_gb",
    "erm_step_peak_mem_gb",
    "cft_step_peak_mem_gb",
    "flyp_step_peak_mem_gb",
    "starft_step_peak_mem_gb",
]
SKIPPED = ["seraser_cached_vs_naive", "ravl_regions_per_s"]
FORBIDDEN = ("ray", "mlflow", "pandas", "pyarrow")
RUN = (
    "import runpy, sys; sys.argv = [sys.argv[1], '--tiny', '--threads', '1', '--device', 'cpu']; "
    "runpy.run_path(sys.argv[0], run_name='__main__'); "
    f"print('forbidden=' + ','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
)


def test_tiny_run_prints_every_figure_once() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "=" in line]
    keys = [line.split("=", 1)[0] for line in lines]
    values = dict(line.split("=", 1) for line in lines)
    for key in [*NUMBERS, *PEAKS, *SKIPPED, "mode", "device", "forbidden"]:
        assert keys.count(key) == 1, f"{key} printed {keys.count(key)} times:\n{proc.stdout}"
    assert values["mode"] == "tiny" and values["device"] == "cpu"
    assert values["forbidden"] == "", f"the script imported {values['forbidden']}"
    for key in NUMBERS:
        assert float(values[key]) > 0, f"{key}={values[key]}"
    for key in PEAKS:
        assert values[key] == "n/a"  # no CUDA memory on a CPU
    for key in SKIPPED:
        assert re.fullmatch(r'skipped reason="[^"]*not (implemented|in this script)[^"]*"', values[key]), (
            values[key]
        )
