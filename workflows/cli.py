"""The ``unspur`` command: thin typer front over the job packages in ``workflows/``.

Every job subcommand takes ``--config FILE --out DIR [--address A] [key.sub=value ...]`` plus the
job's own ``FLAGS`` (``workflows/<job>/flags.py``), declared here as typer options so ``--help``
looks the same everywhere, and forwards them as argv to the job's ``main(argv)``: the command line
and the tests run the same entry point.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["app", "JOBS"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    name="unspur",
    help="Find and remove spurious correlations in vision models, at cluster scale, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Synthetic benchmarks and dataset tools.", no_args_is_help=True)
app.add_typer(data_app, name="data")

#: subcommand -> (job package under workflows/, help). Each exposes ``main(argv) -> int``.
JOBS: dict[str, tuple[str, str]] = {
    "concepts": ("concepts", "Propose, filter and cache each class's concepts (LLM or offline source)."),
    "masks": ("masks", "Ground concepts into masks (grounding + SAM, CLIPSeg or ground truth)."),
    "finetune": ("finetune", "Fine-tune a classifier on Ray Train (erm, cft, robustvit)."),
    "sweep": ("sweep", "Sweep loss weights with Ray Tune over Ray Train."),
    "evaluate": ("evaluate", "Accuracy, per-group / worst-group accuracy and relevance alignment."),
    "adapt": ("adapt", "SEraser: test-time prompt tuning of a CLIP model per image, on Ray Data."),
    "regions": ("regions", "RaVL: embed image regions (grid cells or masks) with a CLIP model, on Ray Data."),
    "discover": ("discover", "RaVL: cluster region embeddings, rank spurious clusters by gap and influence."),
    "run": ("pipeline", "A whole pipeline from one YAML: concepts -> masks -> finetune / adapt -> evaluate."),
}

#: options every job command takes (the job's own argparse in workflows/job.py reads the same)
_COMMON: list[tuple[str, str, type, Any]] = [
    (
        "config",
        "--config",
        Path,
        typer.Option(None, "--config", "-c", help="YAML config (defaults if omitted)"),
    ),
    ("out", "--out", Path, typer.Option(None, "--out", "-o", help="Output folder (overrides cfg.out)")),
    (
        "address",
        "--address",
        str,
        typer.Option(None, help="Ray address (default: RAY_ADDRESS or a local Ray)"),
    ),
]
#: job modules with options of their own (their ``FLAGS``: (flag, type, help), ...)
_WITH_FLAGS = ("sweep", "synth")


def _job_flags(module: str) -> list[tuple[str, str, type, Any]]:
    if module not in _WITH_FLAGS:
        return []
    flags = importlib.import_module(f"unspur.workflows.{module}.flags").FLAGS
    return [
        (f.lstrip("-").replace("-", "_"), f, kind, typer.Option(None, f, help=text))
        for f, kind, text in flags
    ]


def _job_command(module: str, help_text: str, example: str) -> Any:
    """A typer command whose options are the job's, forwarding them as argv to ``main(argv)``."""
    options = _COMMON + _job_flags(module)

    def command(**kwargs: Any) -> None:
        argv: list[str] = []
        for name, flag, _, _ in options:
            if kwargs.get(name) is not None:
                argv += [flag, str(kwargs[name])]
        _call_main(module, argv + list(kwargs.get("overrides") or []))

    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Optional[kind])  # noqa: UP045
        for name, _, kind, default in options
    ]
    params.append(
        inspect.Parameter(
            "overrides",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4"),
            annotation=Optional[list[str]],  # noqa: UP045
        )
    )
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = f"{help_text}\n\nExample: {example}"
    return command


def _call_main(module: str, argv: list[str]) -> None:
    try:
        mod = importlib.import_module(f"unspur.workflows.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"unspur.workflows.{module}":
            typer.echo(f"error: the job module workflows/{module}/job.py is not installed", err=True)
            raise typer.Exit(2) from None
        raise
    raise typer.Exit(mod.main(argv))


for _name, (_module, _help) in JOBS.items():
    app.command(_name)(_job_command(_module, _help, f"unspur {_name} --config FILE --out DIR key.sub=value"))

data_app.command("synth")(
    _job_command(
        "synth",
        "Generate SpuriousWorld or digits-grid (--kind): Parquet image, parts (and regions) tables.",
        "unspur data synth --out DIR --n-train 2000 --rho 0.95 --seed 0",
    )
)


@app.command("demo")
def demo(
    config: Optional[Path] = _COMMON[0][3],  # noqa: UP045
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--out", "-o", help="Output folder (default runs/demo[-METHOD])"
    ),
    address: Optional[str] = _COMMON[2][3],  # noqa: UP045
    overrides: Optional[list[str]] = typer.Argument(  # noqa: UP045
        None,
        help="[METHOD] then dotted overrides, e.g. `starft flyp.train.epochs=2` (METHOD: cft by default)",
    ),
) -> None:
    """A method's whole flow on SpuriousWorld on this machine, nothing downloaded (a few minutes).

    `unspur demo` (or `unspur demo cft`) renders SpuriousWorld, proposes concepts offline (WordNet),
    grounds them with the dataset's part masks, trains a shortcut-reliant base model, fixes it with
    CFT, trains the ERM control, evaluates all three and writes report.md. `unspur demo starft`
    pretrains a tiny CLIP, fine-tunes it with FLYP and with StarFT and compares them to zero-shot.
    `unspur demo seraser`: the same data, concepts and masks, a FLYP-trained tiny CLIP, SEraser's
    test-time prompt tuning on the test split, zero-shot vs tuned in report.md with examples.
    `unspur demo ravl`: digits-grid, a tiny CLIP pretrained to know digits, FLYP on a split where a
    red rectangle co-occurs with digit 0, region discovery (clusters and figures) and the
    region-aware fine-tune, all three zero-shot on the test split.
    Each METHOD runs workflows/configs/METHOD_pipeline.yaml. Same arguments as `unspur run`
    (default --out runs/demo, runs/demo-METHOD for the others); a rerun reuses finished stages.
    """
    from unspur.workflows.pipeline import main as pipeline_main
    from unspur.workflows.pipeline.job import DEMO_CONFIGS

    rest = list(overrides or [])
    method = rest.pop(0) if rest and "=" not in rest[0] else "cft"
    if method not in DEMO_CONFIGS:
        typer.echo(f"error: no demo {method!r}; the demos are {sorted(DEMO_CONFIGS)}", err=True)
        raise typer.Exit(2)
    out = out or Path("runs/demo" if method == "cft" else f"runs/demo-{method}")
    argv = ["--out", str(out)] + (["--config", str(config)] if config else [])
    argv += (["--address", address] if address else []) + rest
    raise typer.Exit(pipeline_main(argv, defaults=DEMO_CONFIGS[method]))


# --- cluster: Ray Jobs submission (workflows/cluster/submit.py) and the MLflow UI (workflows/cluster/ui.py) ---
_ADDRESS = typer.Option(
    None, "--address", help="Head's dashboard URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, local)"
)


@app.command("submit", context_settings={"allow_interspersed_args": False})
def submit_cmd(
    command: list[str] | None = typer.Argument(
        None, help="The unspur subcommand and its arguments, after --"
    ),
    address: str | None = _ADDRESS,
    working_dir: Path | None = typer.Option(None, help="Upload this folder and run its code (e.g. .)"),
    num_cpus: float | None = typer.Option(None, help="CPUs reserved for the entrypoint"),
    num_gpus: float | None = typer.Option(None, help="GPUs reserved for the entrypoint"),
    env: list[str] = typer.Option([], help="NAME=VALUE set in the job (repeatable)"),
    pip: list[str] = typer.Option([], help="Extra pip requirement for the job (repeatable)"),
    runtime_env: Path | None = typer.Option(None, help="runtime_env YAML, e.g. deploy/runtime_env.yaml"),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Stream logs, exit with the job's status"),
) -> None:
    """Run an unspur subcommand as a Ray job: unspur submit --address http://HEAD:8265 -- masks --config c.yaml"""
    from unspur.workflows.cluster.submit import submit_command

    root = typer.main.get_command(app)
    raise typer.Exit(
        submit_command(
            command or [], root, address, working_dir, num_cpus, num_gpus, env, pip, runtime_env, follow
        )
    )


@app.command("status")
def status_cmd(job_id: str, address: str | None = _ADDRESS) -> None:
    """Print a submitted job's status."""
    from unspur.workflows.cluster.submit import status_command

    raise typer.Exit(status_command(job_id, address))


@app.command("logs")
def logs_cmd(
    job_id: str,
    address: str | None = _ADDRESS,
    follow: bool = typer.Option(False, "--follow", help="Stream until the job ends, exit with its status"),
) -> None:
    """Print a submitted job's logs."""
    from unspur.workflows.cluster.submit import logs_command

    raise typer.Exit(logs_command(job_id, address, follow))


@app.command("stop")
def stop_cmd(job_id: str, address: str | None = _ADDRESS) -> None:
    """Stop a submitted job and wait until it has stopped."""
    from unspur.workflows.cluster.submit import stop_command

    raise typer.Exit(stop_command(job_id, address))


@app.command("ui")
def ui_cmd(
    out: Path = typer.Option(Path("."), help="The --out folder of the runs (its mlflow.db)"),
    port: int = typer.Option(5000, help="Port of the UI"),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it)"),
) -> None:
    """Open the MLflow UI on the runs under --out (or MLFLOW_TRACKING_URI)."""
    from unspur.workflows.cluster.ui import ui_command

    raise typer.Exit(ui_command(out, host, port))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="unspur", args=sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
