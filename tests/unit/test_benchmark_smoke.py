"""The benchmarks run on the current code (tiny sizes): they cannot rot.

CFT's curve over worlds and bias strengths: the worlds drawn, the summary line, and a tiny run."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from unspur.config import FinetuneConfig, load_config
from unspur.data.spuriousworld import BACKGROUNDS
from unspur.tune_spaces import validate_point

ROOT = Path(__file__).resolve().parents[2]


def _output(script: str, args: list[str]) -> list[str]:
    """Run ``benchmarks/<script>`` with ``args``; its stdout lines."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def _result_line(script: str, args: list[str]) -> dict[str, str]:
    """Run ``benchmarks/<script>`` with ``args``; its last line's ``key=value`` items."""
    return dict(item.split("=") for item in _output(script, args)[-1].split())


def test_cft_effect_prints_its_result_line() -> None:
    tiny = ["base.train.epochs=1", "cft.train.epochs=1", "base.data.spuriousworld.n_train=200"]
    tiny += ["base.data.spuriousworld.n_val=40", "base.data.spuriousworld.n_test=40", "--threads", "1"]
    keys = _result_line("cft_effect.py", ["--seeds", "1", *tiny])
    assert {"acc_base", "wga_base", "acc_cft", "wga_cft", "acc_control", "wga_control"} <= set(keys)
    assert all(0.0 <= float(keys[k]) <= 1.0 for k in ("acc_base", "wga_cft", "acc_control"))


def test_seraser_cache_prints_its_result_line() -> None:
    tiny = [
        "--model",
        "unspur-tiny-clip",
        "--img-size",
        "32",
        "--images",
        "2",
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    keys = _result_line("seraser_cache.py", tiny)
    assert float(keys["speedup"]) > 0 and keys["same_predictions"] == "True"


def test_starft_effect_and_kl_parts_print_their_lines_and_agree(tmp_path: Path) -> None:
    """starft_kl_parts reads the pretrained and FLYP models starft_effect left in the cache and
    retrains StarFT: the same accuracies; the zero-shot model has no divergence from itself."""
    tiny = [f"pretrain_data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("image_size", 32))]
    tiny += [f"data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("n_val", 16), ("n_test", 16))]
    tiny += ["data.spuriousworld.image_size=32", "pretrain.model.img_size=32", "pretrain.train.batch_size=32"]
    tiny += ["pretrain.train.epochs=1", "flyp.train.epochs=2", "flyp.train.batch_size=16", "--threads", "1"]
    tiny += ["--seeds", "1", "--split", "val", "--cache", str(tmp_path)]
    keys = _result_line("starft_effect.py", tiny)
    expected = {f"{m}_{n}" for n in ("zs", "flyp", "wise", "starft") for m in ("acc", "wga")}
    assert set(keys) == expected
    assert all(0.0 <= float(v) <= 1.0 for v in keys.values())
    assert {p.name.split("-")[0] for p in tmp_path.glob("*.pt")} == {"pretrained", "flyp"}

    lines = _output("starft_kl_parts.py", tiny)
    rows = {r["model"]: r for r in (dict(i.split("=") for i in line.split()) for line in lines[:-1])}
    assert set(rows) == {"zs", "flyp", "starft"}
    for name in rows:
        assert float(rows[name]["acc"]) == pytest.approx(float(keys[f"acc_{name}"]), abs=1e-3)
        assert float(rows[name]["wga"]) == pytest.approx(float(keys[f"wga_{name}"]), abs=1e-3)
    parts = [f"{p}@{s}" for p in ("class_marginal", "within_class") for s in ("s0", "kl_scale")]
    assert all(float(rows["zs"][k]) == pytest.approx(0.0, abs=1e-5) for k in parts)
    assert all(float(rows["flyp"][k]) >= 0.0 for k in parts)
    means = dict(item.split("=") for item in lines[-1].split())
    assert float(means["kl_class_flyp"]) == pytest.approx(
        float(rows["flyp"]["class_marginal@kl_scale"]), abs=1e-4
    )


#: the SEraser test bed at smoke size: pretraining and FLYP 64 images at 32 px x 1 epoch, 2 steps
SERASER_TINY = [
    *(f"pretrain_data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("image_size", 32))),
    *(f"data.spuriousworld.{k}={v}" for k, v in (("n_train", 64), ("n_val", 16), ("n_test", 16))),
    *("data.spuriousworld.image_size=32", "pretrain.model.img_size=32", "pretrain.train.batch_size=32"),
    *("pretrain.train.epochs=1", "flyp.train.epochs=1", "flyp.train.batch_size=16", "seraser.steps=2"),
]


def test_seraser_effect_prints_both_models_lines() -> None:
    tiny = SERASER_TINY
    lines = _output(
        "seraser_effect.py",
        ["--seeds", "1", "--split", "val", "--fill", "grey,black", "--threads", "1", *tiny],
    )
    assert lines[0].startswith("fill=grey,black steps=2")
    parsed = [dict(item.split("=") for item in line.split()) for line in lines[1:]]
    numbers = {"acc_model", "wga_model", "acc_seraser", "wga_seraser"}
    per_fill = {(p["fill"], p["model"]) for p in parsed if "seed" in p}
    assert per_fill == {(f, m) for f in ("grey", "black") for m in ("web_pretrained", "flyp")}
    black_a, grey_web, last = parsed[-3], parsed[-2], parsed[-1]  # the first fill's lines come last
    assert (black_a["fill"], black_a["model"]) == ("black", "flyp")
    assert (grey_web.pop("fill"), grey_web.pop("model")) == ("grey", "web_pretrained")
    assert set(grey_web) == set(last) == numbers
    grey_a = next(p for p in parsed if p.get("fill") == "grey" and p["model"] == "flyp" and "seed" in p)
    assert all(last[k] == f"{float(grey_a[k]):.3f}" for k in numbers)  # one seed: the mean is the seed's


def test_seraser_effect_with_the_check_prints_the_val_verdict() -> None:
    tiny = SERASER_TINY
    lines = _output(
        "seraser_effect.py", ["--seeds", "1", "--check", "--models", "a", "--threads", "1", *tiny]
    )
    seed = dict(item.split("=") for item in lines[1].split())
    assert seed["model"] == "flyp" and seed["trusted"] in ("yes", "no")
    assert {"val_wga_model", "val_wga_seraser", "unchecked_wga_seraser"} <= set(seed)
    kept = "unchecked_wga_seraser" if seed["trusted"] == "yes" else "wga_model"  # what the check leaves
    assert seed["wga_seraser"] == seed[kept]
    assert lines[2].startswith("unchecked model=flyp")
    last = dict(item.split("=") for item in lines[-1].split())
    assert last["wga_seraser"] == seed["wga_seraser"] and not any("web_pretrained" in line for line in lines)


def test_ravl_discovery_prints_its_result_line() -> None:
    tiny = ["--values", "0.9", "pretrain_data.digits_grid.n_train=128", "pretrain.train.epochs=1"]
    tiny += ["data.digits_grid.n_train=96", "data.digits_grid.n_val=48", "data.digits_grid.n_test=48"]
    keys = _result_line("ravl_discovery.py", [*tiny, "flyp.train.epochs=1"])
    assert set(keys) == {"p10_v09", "p10_image_v09"} and all(0.0 <= float(v) <= 1.0 for v in keys.values())


def test_ravl_mitigation_prints_its_result_line() -> None:
    tiny = ["--seeds", "1", "pretrain_data.digits_grid.n_train=128", "pretrain.train.epochs=1"]
    tiny += ["data.digits_grid.n_train=96", "data.digits_grid.n_val=48", "data.digits_grid.n_test=48"]
    keys = _result_line("ravl_mitigation.py", [*tiny, "flyp.train.epochs=1"])
    assert set(keys) == {"acc_ft", "wga_ft", "acc_ravl", "wga_ravl"}


def test_ravl_spuriousworld_prints_its_result_line(tmp_path: Path) -> None:
    tiny = [a for a in SERASER_TINY if not a.startswith("seraser.")]
    lines = _output(
        "ravl_spuriousworld.py", ["--seeds", "1", "--threads", "1", "--out", str(tmp_path), *tiny]
    )
    seed = dict(item.split("=", 1) for item in lines[-2].split() if "=" in item)
    assert seed["seed"] == "0" and seed["tied_class"] in ("bird", "airplane", "bicycle", "tree", "none")
    top10 = seed["top10"].split(",")
    assert 1 <= len(top10) <= 10  # a top cluster of fewer than 10 regions: the share of those
    assert float(seed["p10_background"]) == pytest.approx(top10.count("background") / len(top10), abs=0.005)
    assert float(seed["p10_tied"]) <= float(seed["p10_background"])
    keys = dict(item.split("=") for item in lines[-1].split())
    assert set(keys) == {"p10_background", "p10_tied", "top_is_tied"}
    assert (tmp_path / "seed0" / "regions" / "regions.parquet").is_file()


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worlds_draw_four_of_eight_backgrounds_and_world_zero_is_the_default() -> None:
    bench = _benchmark_module("cft_effect")
    default = ["water", "grass", "sand", "snow"]
    assert bench.world_backgrounds(0, default) == default
    worlds = [bench.world_backgrounds(k, default) for k in range(1, 6)]
    assert all(len(set(w)) == 4 and set(w) <= set(BACKGROUNDS) for w in worlds)
    assert len({tuple(w) for w in worlds}) == 5 and worlds[0] == bench.world_backgrounds(1, default)


def test_curve_summary_takes_the_worst_line_and_the_biased_gains() -> None:
    bench = _benchmark_module("cft_effect")
    lines = [
        {"acc_base": 0.8, "wga_base": 0.1, "acc_cft": 0.7, "wga_cft": 0.5},
        {"acc_base": 0.8, "wga_base": 0.3, "acc_cft": 0.9, "wga_cft": 0.2},
        {"acc_base": 0.9, "wga_base": 0.6, "acc_cft": 0.9, "wga_cft": 0.7},
    ]
    got = bench.curve_summary(lines)
    assert math.isclose(got["worst_harm"], 0.1) and math.isclose(got["worst_acc_drop"], 0.1)
    assert math.isclose(got["min_gain_biased"], -0.1) and math.isclose(got["mean_gain_biased"], 0.15)
    assert got["n_biased"] == 2
    clean = bench.curve_summary([{"acc_base": 0.8, "wga_base": 0.6, "acc_cft": 0.9, "wga_cft": 0.7}])
    assert (
        clean["worst_harm"] == 0.0 and clean["worst_acc_drop"] == 0.0 and math.isnan(clean["min_gain_biased"])
    )


def test_cft_effect_curve_prints_a_line_per_world_and_rho_then_the_summary() -> None:
    tiny = ["base.train.epochs=1", "cft.train.epochs=1", "base.data.spuriousworld.n_train=160"]
    tiny += ["cft.fewshot.per_class=8"]
    tiny += ["base.data.spuriousworld.image_size=32", "base.model.img_size=32", "cft.model.img_size=32"]
    tiny += ["base.data.spuriousworld.n_val=32", "base.data.spuriousworld.n_test=32", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cft_effect.py"), "--worlds", "2", "--rho", "0.9", *tiny],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip().splitlines()
    means = [line for line in out if line.startswith("world=") and " seed=" not in line]
    assert [line.split()[:2] for line in means] == [["world=0", "rho=0.9"], ["world=1", "rho=0.9"]]
    assert "backgrounds=bird:water," in means[0]
    keys = dict(item.split("=") for item in out[-1].split())
    assert {"worst_harm", "worst_acc_drop", "min_gain_biased", "mean_gain_biased"} <= set(keys)
    assert float(keys["worst_harm"]) >= 0.0 and float(keys["worst_acc_drop"]) >= 0.0


def test_cft_effect_space_reports_the_candidate_with_the_best_val_wga(monkeypatch) -> None:
    bench = _benchmark_module("cft_effect")
    tiny = ["train.epochs=1", "data.spuriousworld.n_train=160", "data.spuriousworld.image_size=32"]
    tiny += ["model.img_size=32", "data.spuriousworld.n_val=32", "data.spuriousworld.n_test=32"]
    base_cfg = load_config(FinetuneConfig, ROOT / "workflows/configs/finetune_base.yaml", tiny)
    cft_cfg = load_config(FinetuneConfig, ROOT / "workflows/configs/finetune_cft.yaml", ["model.img_size=32"])
    val_wga = {1e-4: 0.5, 1e-3: 0.75, 1e-2: 0.75}  # a tie: the first of the two wins, as in a sweep
    candidates = [(str(lr), validate_point(cft_cfg, {"train.lr": lr})) for lr in val_wga]
    runs = []

    def finetune(model, sub, parts, cfg, loss_cfg, *args, **kwargs):
        runs.append((cfg.train.lr, loss_cfg.name, cfg.train.seed))
        return 4, {"acc": 0.9, "wga": val_wga[cfg.train.lr]}

    monkeypatch.setattr(bench, "_finetune", finetune)
    r = bench.run_seed(base_cfg, cft_cfg, 3, "test", candidates=candidates)
    assert r["picked"] == "0.001" and r["kept_cft"] == 4
    assert r["trial_val_wga"] == {"0.0001": 0.5, "0.001": 0.75, "0.01": 0.75}
    # every candidate from the same base at the run's seed; the control with the picked optimisation
    assert runs == [(1e-4, "cft", 3), (1e-3, "cft", 3), (1e-2, "cft", 3), (1e-3, "erm", 3)]
    with pytest.raises(SystemExit, match="grid"):
        bench._candidates("cft", cft_cfg)  # a random space: nothing for the benchmark to replay
    assert [label for label, _ in bench._candidates("cft_relevance", cft_cfg)] == ["rollout", "attnlrp_abs"]


def _curve_output(path: Path, world: int, rho: float, wga: tuple[float, float, float]) -> Path:
    base, cft, control = wga
    path.write_text(
        f"world={world} rho={rho} seed=0 acc_base=0.5 wga_base=0.0\n"  # a seed's line: not a mean
        f"world={world} rho={rho} acc_base=0.800 wga_base={base:.3f} acc_cft=0.790 wga_cft={cft:.3f} "
        f"acc_control=0.700 wga_control={control:.3f} backgrounds=bird:water,airplane:grass\n"
        "worst_harm=0.000 worst_acc_drop=0.000 min_gain_biased=nan mean_gain_biased=nan n_biased=0\n"
    )
    return path


def test_cft_curve_merges_runs_in_parts_into_one_summary_and_figure(tmp_path: Path) -> None:
    low = _curve_output(tmp_path / "low.log", 1, 0.9, (0.85, 0.80, 0.84))
    high = _curve_output(tmp_path / "high.log", 1, 0.985, (0.10, 0.30, 0.05))
    figure = tmp_path / "curve.png"
    lines = _output("cft_curve.py", [str(high), str(low), "--figure", str(figure)])
    assert [line.split()[:2] for line in lines[:2]] == [["world=1", "rho=0.9"], ["world=1", "rho=0.985"]]
    summary = dict(item.split("=") for item in lines[-1].split())
    assert float(summary["worst_harm"]) == pytest.approx(0.05) and summary["n_biased"] == "1"
    assert float(summary["min_gain_biased"]) == pytest.approx(0.20)
    assert figure.stat().st_size > 1000
    clash = _curve_output(tmp_path / "clash.log", 1, 0.9, (0.85, 0.70, 0.84))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cft_curve.py"), str(low), str(clash)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "world=1 rho=0.9 differs" in done.stderr


def test_cft_curve_replaces_rerun_seeds_and_recomputes_their_means(tmp_path: Path) -> None:
    def seed_line(seed: int, wga_cft: float, kept: int) -> str:
        return (
            f"world=0 rho=0.985 seed={seed} acc_base=0.800 wga_base=0.100 acc_cft=0.800 wga_cft={wga_cft:.3f} "
            f"acc_control=0.800 wga_control=0.100 kept_cft={kept}\n"
        )

    first = tmp_path / "first.log"
    first.write_text(
        seed_line(0, 0.400, 14)
        + seed_line(1, 0.100, -1)
        + seed_line(2, 0.000, 9)
        + "world=0 rho=0.985 acc_base=0.800 wga_base=0.100 acc_cft=0.800 wga_cft=0.167 acc_control=0.800 "
        "wga_control=0.100 backgrounds=bird:water\n"
    )
    rerun = tmp_path / "rerun.log"
    rerun.write_text(seed_line(2, 0.100, -1))
    lines = _output("cft_curve.py", [str(first), "--rerun", str(rerun)])
    assert lines[0] == "rerun world=0 rho=0.985 seed=2 cft 0.800/0.000 -> 0.800/0.100 (kept epoch 9 -> -1)"
    merged = dict(item.split("=") for item in lines[1].split())
    assert float(merged["wga_cft"]) == pytest.approx(0.2, abs=1e-3)  # (0.4 + 0.1 + 0.1) / 3
    summary = dict(item.split("=") for item in lines[-1].split())
    assert float(summary["min_gain_biased"]) == pytest.approx(0.1, abs=1e-3)
