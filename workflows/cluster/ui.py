"""``unspur ui``: open the MLflow UI on the runs a job wrote.

The tracking URI is the one the jobs use (:func:`unspur.tracking.tracking_uri`): the SQLite
file under ``--out`` by default, or MLFLOW_TRACKING_URI when it is set. A remote tracking
server needs no local UI, so its URL is printed instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["ui_argv", "ui_command"]


def ui_argv(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving the runs at ``uri``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]


def ui_command(out: Path, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve the MLflow UI for the runs under ``out`` until Ctrl-C; returns the exit code."""
    from unspur.tracking import tracking_uri

    uri = tracking_uri(out)
    if uri.startswith(("http://", "https://")):
        print(f"runs are tracked on the MLflow server {uri}: open it in a browser")
        return 0
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            print(
                f"error: no MLflow database at {db}; run a job with --out {out} first "
                "(or set MLFLOW_TRACKING_URI)",
                file=sys.stderr,
            )
            return 1
    print(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return subprocess.call(ui_argv(uri, host, port))
    except KeyboardInterrupt:
        return 0
