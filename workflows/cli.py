"""The ``unspur`` command: thin typer front over the job modules in ``workflows/``.

Every job subcommand takes ``--config FILE --out DIR [key.sub=value ...]`` and calls the job
module's ``main(argv)``, so the command line and the tests run the same entry point.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

__all__ = ["app", "JOBS"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    name="unspur",
    help="Find and remove spurious correlations in vision models, at cluster scale, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Synthetic benchmarks and dataset tools.", no_args_is_help=True)
app.add_typer(data_app, name="data")

#: subcommand -> (module under workflows/, help). Each module exposes ``main(argv) -> int``.
JOBS: dict[str, tuple[str, str]] = {
    "concepts": ("concepts", "Propose, filter and cache each class's concepts (LLM or offline source)."),
    "masks": ("masks", "Ground concepts into masks (grounding + SAM, CLIPSeg or ground truth)."),
    "finetune": ("finetune", "Fine-tune a classifier on Ray Train (erm, cft, robustvit)."),
    "sweep": ("sweep", "Sweep loss weights with Ray Tune over Ray Train."),
    "evaluate": ("evaluate", "Accuracy, per-group / worst-group accuracy and relevance alignment."),
    "run": ("pipeline", "The whole CFT pipeline from one YAML: concepts -> masks -> finetune -> evaluate."),
}

_JOB_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _call_main(module: str, argv: list[str]) -> None:
    try:
        mod = importlib.import_module(f"workflows.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"workflows.{module}":
            typer.echo(f"error: the job module workflows/{module}.py is not installed", err=True)
            raise typer.Exit(2) from None
        raise
    raise typer.Exit(mod.main(argv))


def _register_job(name: str, module: str, help_text: str) -> None:
    def command(ctx: typer.Context) -> None:
        _call_main(module, list(ctx.args))

    command.__doc__ = help_text + "\n\nArguments: --config FILE --out DIR [key.sub=value ...]; -h for details."
    app.command(name, context_settings=_JOB_SETTINGS, add_help_option=False)(command)


for _name, (_module, _help) in JOBS.items():
    _register_job(_name, _module, _help)


@data_app.command("synth", context_settings=_JOB_SETTINGS, add_help_option=False)
def data_synth(ctx: typer.Context) -> None:
    """Generate SpuriousWorld (Parquet image table, parts table, object masks).

    Example: unspur data synth --out DIR --n-train 2000 --rho 0.95 --seed 0
    """
    _call_main("synth", list(ctx.args))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="unspur", args=sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
