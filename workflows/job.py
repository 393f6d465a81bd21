"""The shared entry point of every job module: ``--config``, ``--out``, dotted overrides.

A job module defines ``CONFIG`` (its pydantic model), ``build(cfg)`` and ``run(cfg)`` and
calls :func:`main_for` from its ``main(argv)``. Configs are validated here, before Ray or any
model is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unspur.config import ConfigError, load_config

__all__ = ["parse_job_args", "main_for", "init_ray", "user_errors"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_job_args(prog: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"unspur {prog}")
    parser.add_argument("--config", "-c", type=Path, default=None, help="YAML config (defaults if omitted)")
    parser.add_argument("--out", "-o", type=Path, default=None, help="output folder (overrides cfg.out)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions a user's input causes; a job prints them as one line and exits 2."""
    from actors.proposers import WordNetMissingError
    from unspur.data.adapters import DatasetError
    from unspur.models.checkpoint import CheckpointError
    from unspur.training import NonFiniteLossError

    return (ConfigError, DatasetError, CheckpointError, NonFiniteLossError, WordNetMissingError)


def main_for(
    prog: str,
    config_model: type[BaseModel],
    run: Callable[[Any], Any],
    argv: list[str] | None = None,
    needs_ray: bool = True,
) -> int:
    """Parse argv, validate the config (before any compute), start Ray if needed, run, print."""
    args = parse_job_args(prog, argv)
    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out={args.out}")
    try:
        cfg = load_config(config_model, args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if needs_ray:
        init_ray(args.address)
    try:
        result = run(cfg)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0
