"""Run ``unspur`` subcommands on a Ray cluster through the Ray Jobs API.

``unspur submit --address http://HEAD:8265 -- masks --config c.yaml`` submits the entrypoint
``unspur masks --config c.yaml`` with :class:`ray.job_submission.JobSubmissionClient`, follows
its logs and exits with the job's status; ``unspur status|logs|stop JOB_ID`` look after a job
already submitted. The command line after ``--`` is checked against the ``unspur`` command tree
before the cluster is contacted, and an address nobody answers on fails within
:data:`CONNECT_TIMEOUT_S` seconds instead of hanging.

The address is the head's dashboard URL (``http://HEAD:8265``). Token authentication
(``RAY_AUTH_MODE=token``) is handled by Ray's client from ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH`` in the submitting shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_ADDRESS",
    "DEFAULT_EXCLUDES",
    "LOCAL_ONLY_COMMANDS",
    "ClusterError",
    "build_runtime_env",
    "check_subcommand",
    "connect",
    "exit_code",
    "follow",
    "logs_command",
    "resolve_address",
    "status_command",
    "stop_command",
    "submit",
    "submit_command",
    "wait_terminal",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: seconds to wait for the dashboard to accept a connection before giving up
CONNECT_TIMEOUT_S = 5.0
#: commands that act on this machine or on a cluster from outside; never sent as a job
LOCAL_ONLY_COMMANDS = frozenset({"submit", "status", "logs", "stop", "ui"})
#: never uploaded with --working-dir (also: everything .gitignore names)
DEFAULT_EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "out",
    "mlruns",
    "mlflow.db",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "build",
]
#: local environment variables passed on to the job when they are set here
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE",)


class ClusterError(RuntimeError):
    """A cluster command cannot proceed; the message names the bad input and the fix."""


def resolve_address(address: str | None) -> str:
    """The dashboard URL to talk to: ``address``, else RAY_API_SERVER_ADDRESS, else an http(s)
    RAY_ADDRESS, else the local head (``http://127.0.0.1:8265``).

    A bare ``host:port`` given as ``address`` is taken as the dashboard and gets ``http://``. A
    RAY_ADDRESS that is not a URL is the GCS address (``host:6379``, as set in Ray pods) and is
    skipped. ``ray://`` and other schemes are refused: the Jobs API lives on the dashboard port.
    """
    source = "--address"
    if not address:
        api = os.environ.get("RAY_API_SERVER_ADDRESS", "")
        ray_address = os.environ.get("RAY_ADDRESS", "")
        if api:
            address, source = api, "RAY_API_SERVER_ADDRESS"
        elif ray_address.lower().startswith(("http://", "https://")):
            address, source = ray_address, "RAY_ADDRESS"
        else:
            return DEFAULT_ADDRESS
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ClusterError(
            f"{source}={address!r} is not a Ray dashboard URL; the Jobs API needs the head's "
            "dashboard address, e.g. --address http://HEAD:8265"
        )
    return address


def check_subcommand(args: list[str], root: Any) -> None:
    """Raise :class:`ClusterError` unless ``args`` starts with a real ``unspur`` subcommand.

    ``root`` is the command tree (``typer.main.get_command(app)``); a group is any node with a
    ``commands`` mapping, so ``data synth`` descends into the ``data`` group. An option at a
    group level (``--help``) ends the walk. Local-only commands (submit, ui, ...) are refused.
    """
    if not args:
        raise ClusterError(
            "nothing to run: give the unspur subcommand after --, e.g. -- masks --config c.yaml"
        )
    commands: dict[str, Any] = root.commands
    path: list[str] = []
    for token in args:
        if token.startswith("-"):
            return
        runnable = sorted(n for n in commands if path or n not in LOCAL_ONLY_COMMANDS)
        if token not in runnable:
            where = " ".join(["unspur", *path])
            raise ClusterError(
                f"{token!r} is not a subcommand of `{where}` that can run as a job; "
                f"choose one of: {', '.join(runnable)}"
            )
        path.append(token)
        sub = getattr(commands[token], "commands", None)
        if sub is None:
            return
        commands = sub
    raise ClusterError(f"`unspur {' '.join(path)}` needs a subcommand; run `unspur {' '.join(path)} --help`")


def _parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClusterError(f"--env {item!r} is not of the form NAME=VALUE")
        env[key.strip()] = value
    return env


def _load_runtime_env_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ClusterError(f"--runtime-env {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ClusterError(f"--runtime-env {path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ClusterError(f"--runtime-env {path}: expected a mapping (working_dir:, env_vars:, pip: ...)")
    return data


def build_runtime_env(
    working_dir: Path | None = None,
    env: list[str] | None = None,
    pip: list[str] | None = None,
    runtime_env_file: Path | None = None,
) -> dict[str, Any]:
    """The job's runtime_env: file defaults, then --working-dir, --env, --pip on top.

    The working dir is uploaded without :data:`DEFAULT_EXCLUDES`; it also goes first on the
    job's PYTHONPATH, so the cluster runs this checkout's code. Variables listed in
    :data:`PASSTHROUGH_ENV` that are set here travel with the job.
    """
    runtime_env = _load_runtime_env_file(runtime_env_file) if runtime_env_file else {}
    if working_dir is not None:
        if not working_dir.is_dir():
            raise ClusterError(f"--working-dir {working_dir}: not a directory")
        runtime_env["working_dir"] = str(working_dir.resolve())
    if runtime_env.get("working_dir"):
        excludes = list(runtime_env.get("excludes") or [])
        runtime_env["excludes"] = excludes + [e for e in DEFAULT_EXCLUDES if e not in excludes]
    env_vars = {k: str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    env_vars.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    env_vars.update(_parse_env(env or []))
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if pip:
        base = runtime_env.get("pip") or []
        if not isinstance(base, list):
            raise ClusterError("--pip can only extend a runtime_env whose pip: is a list of requirements")
        runtime_env["pip"] = list(base) + list(pip)
    return runtime_env


@contextlib.contextmanager
def _api_address(address: str) -> Iterator[None]:
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its argument; pin ours."""
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast when nothing answers at ``address`` (Ray's client has no connect timeout)."""
    import requests

    try:
        requests.get(f"{address}/api/version", timeout=(timeout_s, 2 * timeout_s))
    except requests.exceptions.RequestException as err:
        raise ClusterError(
            f"cannot reach a Ray dashboard at {address} ({type(err).__name__}). Check that the "
            "cluster is up, that the address is the head's dashboard URL (port 8265 by default), "
            "and any port-forward, e.g. kubectl port-forward svc/unspur-head-svc 8265:8265"
        ) from None


def connect(address: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> JobSubmissionClient:
    """A JobSubmissionClient for the dashboard at ``address`` (see :func:`resolve_address`)."""
    url = resolve_address(address)
    _probe(url, timeout_s)
    from ray.job_submission import JobSubmissionClient

    try:
        with _api_address(url):
            return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as err:
        raise ClusterError(f"cannot use the Ray Jobs API at {url}: {err}") from None


def submit(
    client: JobSubmissionClient,
    args: list[str],
    runtime_env: dict[str, Any] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> str:
    """Submit ``unspur <args>`` as a Ray job; returns the submission id."""
    return client.submit_job(
        entrypoint=f"unspur {shlex.join(args)}",
        runtime_env=runtime_env or None,
        entrypoint_num_cpus=num_cpus,
        entrypoint_num_gpus=num_gpus,
        metadata={"submitted_by": "unspur submit", "unspur_command": args[0]},
    )


async def _tail(client: JobSubmissionClient, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _job_info(client: JobSubmissionClient, job_id: str) -> JobDetails:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:
        raise ClusterError(f"cannot read job {job_id!r}: {err}") from None


def wait_terminal(
    client: JobSubmissionClient, job_id: str, timeout_s: float | None = None, poll_s: float = 0.5
) -> JobDetails:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; returns its final details."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = _job_info(client, job_id)
        if info.status.is_terminal():
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} is still {info.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def follow(client: JobSubmissionClient, job_id: str, out: TextIO | None = None) -> JobDetails:
    """Stream the job's logs to ``out`` until it ends; returns its final details."""
    asyncio.run(_tail(client, job_id, out or sys.stdout))
    return wait_terminal(client, job_id)


def exit_code(info: JobDetails) -> int:
    """0 for SUCCEEDED; the driver's own exit code for FAILED when known, else 1."""
    if info.status == "SUCCEEDED":  # JobStatus is a str enum
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


# --- the commands behind `unspur submit|status|logs|stop` (return the process exit code) -------


def _describe(info: JobDetails) -> str:
    line = f"{info.submission_id or info.job_id}: {info.status}"
    if info.message:
        line += f" - {info.message}"
    if getattr(info, "driver_exit_code", None) is not None:
        line += f" (driver exit code {info.driver_exit_code})"
    return line


def _run(fn: Any, *args: Any) -> int:
    """Call a command body; a :class:`ClusterError` or a refused token becomes one error line and 1."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
    except AuthenticationError as err:
        print(
            "error: the cluster requires token authentication: export RAY_AUTH_MODE=token and "
            f"RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH), see deploy/README.md. Ray said: {err}",
            file=sys.stderr,
        )
    return 1


def _follow_and_report(client: JobSubmissionClient, job_id: str) -> int:
    try:
        info = follow(client, job_id)
    except RuntimeError as err:  # the log stream broke (head gone, network)
        raise ClusterError(
            f"lost the logs of {job_id}: {err}; check it with `unspur status {job_id}`"
        ) from None
    except KeyboardInterrupt:
        print(f"\ndetached; {job_id} keeps running (unspur stop {job_id} ends it)", file=sys.stderr)
        return 130
    print(_describe(info), file=sys.stderr)
    return exit_code(info)


def submit_command(
    args: list[str],
    root: Any,
    address: str | None = None,
    working_dir: Path | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    env: list[str] | None = None,
    pip: list[str] | None = None,
    runtime_env_file: Path | None = None,
    follow_logs: bool = True,
) -> int:
    """Validate, submit ``unspur <args>``, follow it (unless ``follow_logs`` is off), return its exit code."""

    def body() -> int:
        check_subcommand(args, root)
        runtime_env = build_runtime_env(working_dir, env, pip, runtime_env_file)
        client = connect(address)
        try:
            job_id = submit(client, args, runtime_env, num_cpus, num_gpus)
        except (RuntimeError, ValueError) as err:
            raise ClusterError(f"the cluster refused the job: {err}") from None
        print(f"submitted {job_id}: unspur {shlex.join(args)}", file=sys.stderr)
        if not follow_logs:
            print(job_id)
            return 0
        return _follow_and_report(client, job_id)

    return _run(body)


def status_command(job_id: str, address: str | None = None) -> int:
    """Print the job's status line."""

    def body() -> int:
        print(_describe(_job_info(connect(address), job_id)))
        return 0

    return _run(body)


def logs_command(job_id: str, address: str | None = None, follow_logs: bool = False) -> int:
    """Print the job's logs so far, or follow them to the end and return the job's exit code."""

    def body() -> int:
        client = connect(address)
        if follow_logs:
            _job_info(client, job_id)
            return _follow_and_report(client, job_id)
        try:
            sys.stdout.write(client.get_job_logs(job_id))
        except RuntimeError as err:
            raise ClusterError(f"cannot read the logs of job {job_id!r}: {err}") from None
        return 0

    return _run(body)


def stop_command(job_id: str, address: str | None = None, timeout_s: float = 60.0) -> int:
    """Ask the job to stop, wait (up to ``timeout_s``) until it has, print its final status."""

    def body() -> int:
        client = connect(address)
        try:
            was_running = client.stop_job(job_id)
        except RuntimeError as err:
            raise ClusterError(f"cannot stop job {job_id!r}: {err}") from None
        info = wait_terminal(client, job_id, timeout_s=timeout_s)
        if not was_running:
            print(f"{job_id} was not running", file=sys.stderr)
        print(_describe(info))
        return 0

    return _run(body)
