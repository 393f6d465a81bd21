"""Several jobs at once against one tracking store: the sqlite file of laptop runs, and a real
``mlflow server`` (sqlite backend, artifact folder) on localhost. Four writer processes
(``tracking_writer.py``) start at the same instant; afterwards every run, metric step and
artifact must be there and no writer may have failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
JOBS = 4


def _jobs(out: Path, env: dict[str, str]) -> list[dict]:
    start_at = time.time() + 20  # every writer has imported MLflow by then, even on a busy machine
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "tracking_writer.py"), str(out), str(job), str(start_at)],
            env={**env, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in range(JOBS)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def _everything_is_there(uri: str, results: list[dict], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    assert [r for r in results if not r["ok"]] == []
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(r["run_id"] for r in results)  # none lost, no extra
    for run in runs:
        job = int(run.data.params["job"])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(20))
        folder = client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
        assert json.loads((Path(folder) / "result.json").read_text()) == {"job": job}
        assert (Path(folder) / "model" / "model.txt").read_text() == f"weights of job {job}\n"


@pytest.mark.slow
def test_four_jobs_share_one_sqlite_file(tmp_path: Path) -> None:
    """Without the store lock, 4 jobs creating one sqlite store at once broke its schema migration
    (measured: 1 of 12 writers succeeded over 3 tries; 2 of 3 databases were left unreadable)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    results = _jobs(tmp_path / "shared", env)
    _everything_is_there(f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}", results, tmp_path / "read")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """``mlflow server`` on localhost: sqlite backend, proxied artifacts in a folder; its URI."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
        + ["--artifacts-destination", str(tmp_path / "server_artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, "mlflow server exited"
        assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
        time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a busy machine: the server and its workers, by group id
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.slow
def test_four_jobs_share_one_tracking_server(tmp_path: Path, mlflow_server: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    results = _jobs(tmp_path / "jobs", env)
    _everything_is_there(mlflow_server, results, tmp_path / "read")
    assert len(list((tmp_path / "server_artifacts").rglob("model.txt"))) == JOBS  # stored by the server
