"""The pipeline's outputs for people: the comparison table (terminal) and ``report.md``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["print_table", "write_report", "HEADLINE"]

#: (metric key, column title) of the comparison table, in order.
HEADLINE = (("acc", "avg acc"), ("wga", "wga (worst-group acc)"), ("align_mass_in", "relevance in object"))


#: how the report names a relevance method (``evaluate.relevance``)
_METHOD_NAMES = {
    "rollout": "gradient-weighted attention rollout",
    "attnlrp": "AttnLRP (signed)",
    "attnlrp_abs": "AttnLRP (magnitude)",
    "attnlrp_pos": "AttnLRP (positive part)",
}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def print_table(cfg: Any, evaluations: dict[str, dict[str, Any]]) -> None:
    """A rich table of the evaluated models (``cfg.evaluate.models`` labels), one plain
    ``model: acc=.. wga=..`` line each, then the headline gain of ``cfg.report.gain``."""
    from rich.console import Console
    from rich.table import Table

    labels = cfg.evaluate.models
    console = Console()
    table = Table(title=f"{cfg.report.title}: {cfg.evaluate.split} split")
    table.add_column("model")
    for _, title in HEADLINE:
        table.add_column(title, justify="right")
    for name, result in evaluations.items():
        table.add_row(labels.get(name, name), *(_fmt(result.get(key)) for key, _ in HEADLINE))
    console.print(table)
    for name, result in evaluations.items():
        console.print(f"{name}: " + " ".join(f"{key}={_fmt(result.get(key))}" for key, _ in HEADLINE))
    gain = cfg.report.gain
    if gain is not None and gain.method in evaluations and gain.baseline in evaluations:
        method, baseline = evaluations[gain.method], evaluations[gain.baseline]
        console.print(
            f"{gain.label or gain.method} worst-group gain over {gain.baseline}: "
            f"{method['wga'] - baseline['wga']:+.3f} (average accuracy change {method['acc'] - baseline['acc']:+.3f})"
        )
        where = regime_line(cfg, evaluations)
        if where:
            console.print(where)


def regime_line(cfg: Any, evaluations: dict[str, dict[str, Any]]) -> str | None:
    """Where this run's baseline sits on the method's measured curve (``report.gain.regimes``):
    ``Where base sits: wga 0.213 (<= 0.3): <note>``; None without bands or a baseline result."""
    gain = cfg.report.gain
    if gain is None or gain.baseline not in evaluations or evaluations[gain.baseline].get("wga") is None:
        return None
    wga = float(evaluations[gain.baseline]["wga"])
    band = next((r for r in gain.regimes if wga <= r.max_base_wga), None)
    if band is None:
        return None
    return f"Where {gain.baseline} sits: {cfg.evaluate.split} wga {wga:.3f} (<= {band.max_base_wga:g}): {band.note}"


def _markdown_table(evaluations: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = ["| model | " + " | ".join(t for _, t in HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for name, result in evaluations.items():
        lines.append(
            f"| {labels.get(name, name)} | " + " | ".join(_fmt(result.get(k)) for k, _ in HEADLINE) + " |"
        )
    return lines


def _group_table(evaluations: dict[str, dict[str, Any]], kind: str) -> list[str]:
    groups = sorted({g for r in evaluations.values() for g in r.get("per_group", {})})
    names = list(evaluations)
    lines = [f"| group ({kind}) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for group in groups:
        cells = [_fmt(evaluations[n].get("per_group", {}).get(group)) for n in names]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def _selection_lines(results: dict[str, Any]) -> list[str]:
    """A section naming the weights each finetune stage with ``run.select`` kept: ``epoch 12 of 75
    had the best val wga ...; kept it`` or ``no epoch improved on the starting model's val wga
    0.312; kept it`` (the starting model is a candidate, so a stage never returns a worse one)."""
    lines = []
    for name, result in results.items():
        if not isinstance(result, dict) or result.get("select", "last") == "last":
            continue
        note = result.get("selection")
        if not note:  # a summary written before the note existed
            metric = result["select"].removeprefix("best_")
            note = (
                f"weights of epoch {result['selected_epoch'] + 1} of {result['epochs']}, best {metric} on val"
            )
        lines.append(f"- `{name}`: {note}")
    return ["", "## Weights kept by run.select", "", *lines] if lines else []


def _check_lines(results: dict[str, Any]) -> list[str]:
    """A section with each adapt stage's check on a held-out split: whether SEraser's predictions
    were kept or the zero-shot head, and the numbers that decided it."""
    lines = [
        f"- `{name}`: {result['check']['note']}"
        for name, result in results.items()
        if isinstance(result, dict) and isinstance(result.get("check"), dict)
    ]
    return ["", "## Checked before trusting test-time tuning", "", *lines] if lines else []


def _figure(figures: Path, source: str | None, name: str, heading: str, caption: str) -> list[str]:
    """Copy a stage's figure into ``figures/name`` and return its report section (none if absent)."""
    if not source or not Path(source).is_file():
        return []
    shutil.copyfile(source, figures / name)
    return ["", f"## {heading}", "", caption, "", f"![{name}](figures/{name})"]


def write_report(
    out: Path, cfg: BaseModel, results: dict[str, dict[str, Any]], evaluations: dict[str, dict[str, Any]]
) -> Path:
    """Write ``<out>/report.md``: headline table, per-group accuracies, relevance figures."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {cfg.report.title}",
        "",
        f"Output folder: `{out}`",
        "",
        f"## Held-out evaluation ({cfg.evaluate.split} split, balanced over {cfg.report.groups.replace('/', ' x ')})",
        "",
    ]
    lines += _markdown_table(evaluations, cfg.evaluate.models)
    where = regime_line(cfg, evaluations)
    if where:
        lines += ["", where]
    lines += _selection_lines(results)
    lines += _check_lines(results)
    lines += [
        "",
        "wga = worst-group accuracy; relevance in object = share of the relevance map "
        f"({_METHOD_NAMES.get(cfg.evaluate.relevance, cfg.evaluate.relevance or 'not computed')}) that falls on "
        "the object's pixels.",
        "",
        "## Accuracy per group",
        "",
    ] + _group_table(evaluations, cfg.report.groups)
    for name in evaluations:
        result = results.get(name) or {}
        lines += _figure(
            figures,
            result.get("figure"),
            f"{name}_relevance_before_after.png",
            f"Relevance maps: starting model (before) vs {name} (after)",
            "Columns: image, object/concept mask, relevance before, relevance after (validation images).",
        )
        lines += _figure(
            figures,
            result.get("examples"),
            f"{name}_examples.png",
            f"Before / after examples: {cfg.evaluate.models.get(name, name)}",
            f"Rows: {result.get('examples_split', 'test')} images (those whose prediction changed first). "
            "Columns: image, foreground "
            "view, background view; each titled with the label and the zero-shot and tuned predictions.",
        )
    lines += ["", "## Stages", ""] + [
        f"- `{name}`: `{out / name}`" for name in results if not name.startswith("eval")
    ]
    lines += ["", "Open the tracked runs with `unspur ui --out " + str(out) + "`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
