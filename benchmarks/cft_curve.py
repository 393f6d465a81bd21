"""CFT's curve from the outputs of ``cft_effect.py --worlds/--rho`` runs: merged lines, summary, figure.

The curve is hours of CPU, so it is usually run in parts (one ``--rho`` per process, side by side).
This reads their outputs, keeps the seed-mean line of each (world, rho) (a pair found twice must
agree), and prints them in order, then the summary line of ``cft_effect.py`` over all of them
(:func:`cft_effect.curve_summary`). ``--figure`` draws wga of base, CFT and control against rho,
one panel per world.

    python benchmarks/cft_curve.py rho09.log rho0985.log --figure benchmarks/figures/cft_curve.png

``--rerun`` outputs (``cft_effect.py --seed-ids``: some seeds run again, e.g. under a changed
selection rule) replace those seeds' lines: every (world, rho) they touch gets its means recomputed
from the seed lines (the outputs' and the reruns'), and each replaced seed is printed with its old
and new CFT numbers.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from cft_effect import CURVE_KEYS, curve_summary

LINE = re.compile(r"^world=(\d+) rho=([0-9.]+) (acc_base=.*)$")
SEED_LINE = re.compile(r"^world=(\d+) rho=([0-9.]+) seed=(\d+) (acc_base=.*)$")
Key = tuple[int, float]


def _items(text: str) -> dict[str, str]:
    """``key=value`` items of an output line -> {key: value}."""
    return dict(item.split("=", 1) for item in text.split())


def read_lines(paths: list[Path]) -> dict[Key, dict[str, float | str]]:
    """{(world, rho): the seed means and ``backgrounds``} from the outputs at ``paths``."""
    lines: dict[Key, dict[str, float | str]] = {}
    for path in paths:
        for text in path.read_text().splitlines():
            match = LINE.match(text)
            if match is None:
                continue  # a seed's line, the summary, or anything else
            items = _items(match.group(3))
            row: dict[str, float | str] = {k: float(items[k]) for k in CURVE_KEYS}
            row["backgrounds"] = items.get("backgrounds", "")
            key = (int(match.group(1)), float(match.group(2)))
            if key in lines and lines[key] != row:
                raise SystemExit(f"world={key[0]} rho={key[1]:g} differs between the outputs given ({path})")
            lines[key] = row
    if not lines:
        raise SystemExit(f"no 'world=.. rho=..' mean line in {', '.join(map(str, paths))}")
    return dict(sorted(lines.items()))


def read_seed_lines(paths: list[Path]) -> dict[tuple[int, float, int], dict[str, str]]:
    """{(world, rho, seed): the seed line's items} from the outputs at ``paths``; a later path's
    line replaces an earlier one's."""
    seeds: dict[tuple[int, float, int], dict[str, str]] = {}
    for path in paths:
        for text in path.read_text().splitlines():
            match = SEED_LINE.match(text)
            if match is not None:
                key = (int(match.group(1)), float(match.group(2)), int(match.group(3)))
                seeds[key] = _items(match.group(4))
    return seeds


def apply_reruns(
    lines: dict[Key, dict[str, float | str]], outputs: list[Path], reruns: list[Path]
) -> list[str]:
    """Replace in ``lines`` the seeds run again in ``reruns``; returns a note per replaced seed."""
    before, after = read_seed_lines(outputs), read_seed_lines(reruns)
    if not after:
        raise SystemExit(f"no 'world=.. rho=.. seed=..' line in {', '.join(map(str, reruns))}")
    notes = []
    for world, rho in sorted({(w, r) for w, r, _ in after}):
        if (world, rho) not in lines:
            raise SystemExit(f"world={world} rho={rho:g} is rerun but not in the outputs given")
        merged = {k: v for k, v in before.items() if k[:2] == (world, rho)}
        for key in (k for k in after if k[:2] == (world, rho)):
            if key not in merged:
                raise SystemExit(
                    f"world={world} rho={rho:g} seed={key[2]} is rerun but not in the outputs given"
                )
            old, new = merged[key], after[key]
            notes.append(
                f"rerun world={world} rho={rho:g} seed={key[2]} "
                f"cft {old['acc_cft']}/{old['wga_cft']} -> {new['acc_cft']}/{new['wga_cft']} "
                f"(kept epoch {old.get('kept_cft', '?')} -> {new.get('kept_cft', '?')})"
            )
            merged[key] = new
        for k in CURVE_KEYS:
            lines[(world, rho)][k] = statistics.fmean(float(v[k]) for v in merged.values())
    return notes


def draw(lines: dict[tuple[int, float], dict[str, float | str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({w for w, _ in lines})
    fig, axes = plt.subplots(1, len(worlds), figsize=(3.0 * len(worlds), 2.8), squeeze=False, sharey=True)
    for ax, world in zip(axes[0], worlds, strict=True):
        rhos = sorted(r for w, r in lines if w == world)
        for key, label, style in (
            ("wga_base", "base", "o-"),
            ("wga_cft", "CFT", "s-"),
            ("wga_control", "control", "^--"),
        ):
            ax.plot(rhos, [lines[(world, r)][key] for r in rhos], style, label=label)
        ax.set_title(f"world {world}\n{lines[(world, rhos[0])]['backgrounds']}", fontsize=6)
        ax.set_xlabel("train rho", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("test worst-group accuracy (3-seed mean)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", nargs="+", type=Path, help="saved stdout of cft_effect.py curve runs")
    parser.add_argument(
        "--rerun",
        nargs="+",
        type=Path,
        default=[],
        help="outputs of seeds run again: they replace those seeds",
    )
    parser.add_argument("--figure", type=Path, help="PNG of wga against rho, one panel per world")
    args = parser.parse_args(argv)
    missing = [str(p) for p in [*args.outputs, *args.rerun] if not p.is_file()]
    if missing:
        raise SystemExit(f"no such output: {', '.join(missing)}")
    lines = read_lines(args.outputs)
    if args.rerun:
        print("\n".join(apply_reruns(lines, args.outputs, args.rerun)))
    for (world, rho), row in lines.items():
        print(f"world={world} rho={rho:g} " + " ".join(f"{k}={row[k]:.3f}" for k in CURVE_KEYS))
    summary = curve_summary([{k: float(row[k]) for k in CURVE_KEYS} for row in lines.values()])
    print(" ".join(f"{k}={v:.3f}" if k != "n_biased" else f"{k}={v:.0f}" for k, v in summary.items()))
    if args.figure is not None:
        draw(lines, args.figure)
    return summary


if __name__ == "__main__":
    main()
