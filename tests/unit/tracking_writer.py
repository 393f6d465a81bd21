"""One tracking job of ``test_tracking_concurrency.py``, run as its own process: waits for a common
start time, then logs through :mod:`unspur.tracking` what a job logs (a run, its config, 20 metric
steps, a JSON and a file artifact) and prints one JSON line: the run id, or the error it met.

    python tests/unit/tracking_writer.py OUT JOB START_AT
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main(out: str, job: int, start_at: float) -> dict:
    from unspur import tracking

    while time.time() < start_at:
        time.sleep(0.01)
    result: dict = {"job": job}
    try:
        with tracking.start_run(out, "concurrent", run_name=f"job-{job}") as run:
            result["run_id"] = run.info.run_id
            tracking.log_config({"job": job, "train": {"lr": 1e-3, "epochs": 20}})
            for step in range(20):
                tracking.log_metrics({"loss": 1.0 / (step + 1), "job": job}, step=step)
            tracking.log_dict({"job": job}, "result.json")
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.txt"
                path.write_text(f"weights of job {job}\n")
                tracking.log_artifact(path, "model")
        result["ok"] = True
    except Exception as err:  # measured, not hidden: the test counts these
        result.update(ok=False, error=f"{type(err).__name__}: {str(err)[:500]}")
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
