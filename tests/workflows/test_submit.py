"""``unspur submit|status|logs|stop`` against a real Ray head started here (dashboard on loopback).

The head runs in its own process group with its own temp dir and ports, so it never touches the
session Ray of other tests; teardown kills exactly that group (not ``ray stop``, which stops every
Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import typer
from typer.testing import CliRunner

from unspur.workflows.cli import app
from unspur.workflows.cluster.submit import (
    DEFAULT_EXCLUDES,
    ClusterError,
    build_runtime_env,
    check_subcommand,
    connect,
    resolve_address,
)

ROOT = typer.main.get_command(app)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _head_argv(temp_dir: str, gcs_port: int, dashboard_port: int) -> list[str]:
    ports = {
        "--port": gcs_port,
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
    }
    argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1"]
    argv += ["--dashboard-host", "127.0.0.1", "--include-dashboard=true", "--num-cpus", "1"]
    argv += ["--object-store-memory", "100000000", "--temp-dir", temp_dir, "--disable-usage-stats"]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    return argv


def _kill_head(pgid: int, temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, our head's process group and anything else living in its temp dir."""
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 3.0)):
        procs = [p for p in psutil.process_iter(["cmdline"]) if _is_ours(p, pgid, temp_dir)]
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=grace)


def _is_ours(proc: psutil.Process, pgid: int, temp_dir: str) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid or any(temp_dir in a for a in proc.info["cmdline"] or [])
    except (ProcessLookupError, psutil.Error):
        return False


@contextlib.contextmanager
def _running_head(**extra_env: str) -> Iterator[str]:
    """A one-CPU Ray head with the dashboard on 127.0.0.1; yields its dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="unspur-head-")
    dashboard_port = _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `unspur` for jobs
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    starter = subprocess.Popen(
        _head_argv(temp_dir, _free_port(), dashboard_port),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        out, _ = starter.communicate(timeout=90)
        assert starter.returncode == 0, f"ray start failed:\n{out[-3000:]}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/api/version", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.5)
        yield url
    finally:
        _kill_head(starter.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """The shared unauthenticated head of this module's job tests."""
    with _running_head() as url:
        yield url


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- needs no cluster ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "nothing to run"),
        (["bogus"], "'bogus' is not a subcommand of `unspur`"),
        (["ui"], "'ui' is not a subcommand"),
        (["submit", "--", "masks"], "'submit' is not a subcommand"),
        (["data"], "`unspur data` needs a subcommand"),
        (["data", "nope"], "choose one of: synth"),
    ],
)
def test_bad_subcommand_is_refused_before_any_connection(args: list[str], fragment: str) -> None:
    with pytest.raises(ClusterError, match=fragment.replace("(", r"\(")):
        check_subcommand(args, ROOT)
    # the CLI fails the same way without contacting the (unreachable) address
    code, _, err = _cli("submit", "--address", "http://127.0.0.1:1", "--", *args)
    assert code == 1 and fragment in err and "cannot reach" not in err


@pytest.mark.parametrize(
    "args", [["masks", "--config", "c.yaml"], ["data", "synth", "--out", "x"], ["--help"]]
)
def test_real_subcommands_pass(args: list[str]) -> None:
    check_subcommand(args, ROOT)


def test_unreachable_address_fails_fast_and_clearly() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    for argv in (["submit", "--address", dead, "--", "masks"], ["status", "--address", dead, "raysubmit_x"]):
        start = time.monotonic()
        code, _, err = _cli(*argv)
        assert time.monotonic() - start < 10
        assert code == 1 and f"cannot reach a Ray dashboard at {dead}" in err


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address(None) == "http://head:8265"
    assert resolve_address("other:9000") == "http://other:9000"  # the flag wins over the env
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, as in Ray pods: not the dashboard
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://ray.example.org")
    assert resolve_address(None) == "https://ray.example.org"
    with pytest.raises(ClusterError, match="dashboard"):
        resolve_address("ray://head:10001")


def test_runtime_env_merges_file_flags_and_passthrough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env_file = tmp_path / "env.yaml"
    env_file.write_text("env_vars: {A: '1', B: '2'}\npip: [tqdm]\nexcludes: [data]\n")
    runtime_env = build_runtime_env(tmp_path, ["B=3", "C=x=y"], ["rich"], env_file)
    assert runtime_env["working_dir"] == str(tmp_path.resolve())
    assert runtime_env["env_vars"] == {"A": "1", "B": "3", "C": "x=y", "HF_HUB_OFFLINE": "1"}
    assert runtime_env["pip"] == ["tqdm", "rich"]
    assert runtime_env["excludes"][0] == "data" and set(DEFAULT_EXCLUDES) <= set(runtime_env["excludes"])
    with pytest.raises(ClusterError, match="NAME=VALUE"):
        build_runtime_env(env=["novalue"])
    with pytest.raises(ClusterError, match="not a directory"):
        build_runtime_env(working_dir=tmp_path / "missing")


# --- unspur ui -------------------------------------------------------------------------------


def test_ui_without_runs_or_with_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _cli("ui", "--out", str(tmp_path))
    assert code == 1 and "no MLflow database" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    code, out, _ = _cli("ui", "--out", str(tmp_path))
    assert code == 0 and "http://mlflow.example.org:5000" in out


def test_ui_starts_mlflow_ui_on_the_out_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line handed to MLflow parses with MLflow's own `ui` command (the server itself
    is not started here: MLflow's start-up takes half a minute on a busy 2-core machine)."""
    import click
    from mlflow.cli import cli as mlflow_cli

    import unspur.workflows.cluster.ui

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").touch()
    calls: list[list[str]] = []
    monkeypatch.setattr(unspur.workflows.cluster.ui.subprocess, "call", lambda argv: calls.append(argv) or 0)
    code, _, err = _cli("ui", "--out", str(tmp_path), "--port", "5123")
    assert code == 0 and len(calls) == 1, err
    assert calls[0][:4] == [sys.executable, "-m", "mlflow", "ui"]
    ui = mlflow_cli.get_command(click.Context(mlflow_cli), "ui")
    params = ui.make_context("ui", calls[0][4:]).params
    assert params["backend_store_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert params["port"] == 5123 and params["host"] == "127.0.0.1"


# --- against real heads --------------------------------------------------------------------


def test_token_auth_cluster_needs_the_token() -> None:
    """A head with RAY_AUTH_MODE=token: no / wrong token -> a clear error; the right one -> runs.

    The CLI runs in a subprocess so the token settings never reach this test process's Ray.
    (Runs before the module's shared head starts, so two heads never run at once.)
    """
    token = "unspur-test-token-0123456789abcdef"
    unspur = str(Path(sys.executable).with_name("unspur"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with _running_head(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) as url:
        cases = [
            ({"RAY_AUTH_MODE": "disabled"}, 1),
            ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 32}, 1),
        ]
        cases.append(({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, 0))
        for extra, expected in cases:
            argv = [unspur, "submit", "--address", url, "--", "--help"]
            done = subprocess.run(argv, env={**base, **extra}, capture_output=True, text=True, timeout=120)
            assert done.returncode == expected, done.stderr
            if expected:
                assert "requires token authentication" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr
            else:
                assert "SUCCEEDED" in done.stderr


def test_submit_follows_logs_and_exits_zero(head: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("uploaded with the job\n")
    code, out, err = _cli(
        "submit", "--address", head, "--working-dir", str(tmp_path), "--env", "UNSPUR_MARK=42", "--", "--help"
    )
    assert code == 0, err
    assert "Usage: unspur" in out and "submit" in out  # the job's own output, streamed back
    job_id = err.split("submitted ", 1)[1].split(":", 1)[0]
    info = connect(head).get_job_info(job_id)
    assert info.status == "SUCCEEDED" and info.entrypoint == "unspur --help"
    assert info.runtime_env["env_vars"]["UNSPUR_MARK"] == "42"
    assert info.runtime_env["working_dir"].startswith("gcs://")  # uploaded, not a local path
    code, out, _ = _cli("status", "--address", head, job_id)
    assert code == 0 and f"{job_id}: SUCCEEDED" in out


def test_failed_job_gives_nonzero_exit_and_its_logs(head: str) -> None:
    code, _, err = _cli("submit", "--address", head, "--", "concepts", "--config", "/nonexistent/c.yaml")
    assert code != 0
    job_id = err.split("submitted ", 1)[1].split(":", 1)[0]
    assert f"{job_id}: FAILED" in err
    code, out, _ = _cli("status", "--address", head, job_id)
    assert code == 0 and "FAILED" in out
    code, out, _ = _cli("logs", "--address", head, job_id)
    assert code == 0 and "error" in out.lower()
    code, _, _ = _cli("logs", "--address", head, "--follow", job_id)
    assert code != 0  # following a finished job exits with its status at once


def test_no_follow_prints_id_and_stop_stops(head: str) -> None:
    code, out, _ = _cli("submit", "--address", head, "--no-follow", "--", "--help")
    assert code == 0 and out.strip().startswith("raysubmit_")
    client = connect(head)
    sleeper = client.submit_job(entrypoint="sleep 120")
    deadline = time.monotonic() + 30
    while client.get_job_status(sleeper) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    code, out, _ = _cli("stop", "--address", head, sleeper)
    assert code == 0 and f"{sleeper}: STOPPED" in out
    code, _, err = _cli("status", "--address", head, "raysubmit_doesnotexist")
    assert code == 1 and "raysubmit_doesnotexist" in err
