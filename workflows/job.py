"""The shared entry point of every job module: ``--config``, ``--out``, dotted overrides.

A job module defines ``CONFIG`` (its pydantic model), ``build(cfg)`` and ``run(cfg)`` and
calls :func:`main_for` from its ``main(argv)``. Configs are validated here, before Ray or any
model is touched. A job with options of its own (``unspur sweep --space``, ``unspur data synth
--n-train``) declares them as ``FLAGS`` ((flag, type, help), ...) and turns them into dotted
overrides; the ``unspur`` command builds each subcommand's help from the same ``FLAGS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unspur.config import ConfigError, load_config

__all__ = ["JOB_API", "Flag", "init_ray", "job_attributes", "main_for", "parse_job_args", "user_errors"]

#: a job's own command-line option: (flag, type, help), e.g. ("--samples", int, "trials to draw")
Flag = tuple[str, type, str]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_job_args(prog: str, argv: list[str] | None, flags: Sequence[Flag] = ()) -> argparse.Namespace:
    """``--config``, ``--out``, ``--address``, the job's own ``flags`` and the dotted overrides."""
    parser = argparse.ArgumentParser(prog=f"unspur {prog}")
    parser.add_argument("--config", "-c", type=Path, default=None, help="YAML config (defaults if omitted)")
    parser.add_argument("--out", "-o", type=Path, default=None, help="output folder (overrides cfg.out)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    for flag, kind, text in flags:
        parser.add_argument(flag, type=kind, default=None, help=text)
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
    from unspur.actors.proposers import WordNetMissingError
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
    *,
    flags: Sequence[Flag] = (),
    flag_overrides: Callable[[argparse.Namespace], list[str]] | None = None,
    defaults: str | Path | None = None,
    check: Callable[[Any], Any] | None = None,
    show: Callable[[Any], None] | None = None,
) -> int:
    """Parse argv, validate the config (before any compute), start Ray if needed, run, print.

    ``flags`` / ``flag_overrides``: the job's own options and how they become dotted overrides;
    ``defaults``: the YAML used when no ``--config`` is given; ``check(cfg)``: further validation
    before Ray (may raise ConfigError); ``needs_ray=False``: the job starts Ray itself (``--address``
    is passed on as RAY_ADDRESS); ``show(result)`` prints the result (default: JSON of a dict).
    """
    args = parse_job_args(prog, argv, flags)
    try:
        overrides = list(args.overrides) + (flag_overrides(args) if flag_overrides else [])
        if args.out is not None:
            overrides.append(f"out={args.out}")
        cfg = load_config(config_model, args.config or defaults, overrides)
        if check is not None:
            check(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if needs_ray:
        init_ray(args.address)
    elif args.address:
        os.environ["RAY_ADDRESS"] = args.address
    try:
        result = run(cfg)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if show is not None:
        show(result)
    elif isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


#: what a job package re-exports from its ``job`` module
JOB_API = ("CONFIG", "build", "main", "run")


def job_attributes(package: str) -> Callable[[str], Any]:
    """The module ``__getattr__`` of a job package: ``CONFIG``, ``build``, ``run`` and ``main`` come
    from ``<package>.job``, imported on first use (so the ``unspur`` command starts without Ray)."""

    def attribute(name: str) -> Any:
        if name in JOB_API:
            return getattr(importlib.import_module(f"{package}.job"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute
