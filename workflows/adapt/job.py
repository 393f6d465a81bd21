"""``unspur adapt``: SEraser test-time prompt tuning (METHODS.md 4) as a Ray Data inference stage.

image table + masks table + CLIP checkpoint -> predictions (Parquet). Ray Data pipeline: read the
image table (the columns needed, rows of ``split``) -> drop image ids already written and repeated
ids (first row wins) -> attach each image's masks (the ok RLEs of the masks table as JSON, or why
there are none) -> a pool of :class:`unspur.actors.prompt_tuner.PromptTunerActor` actors
(``ActorPoolStrategy``, fractional CPUs / GPUs from ``compute``), each batch tuned and written as
one atomic shard of ``<out>/predictions/`` -> per-shard counts back to the driver.

A rerun (after a kill, say) skips the images whose rows a finished shard holds. The finished
store becomes ``<out>/predictions.parquet`` (``image_id``, ``label``, ``group``, ``pred_before``
zero-shot, ``pred`` tuned, ``probs_before``, ``probs``, ``status``, ``error``, ``loss_start``,
``loss_end``), ``metrics.json`` (zero-shot vs tuned accuracy, worst-group accuracy, per group)
and ``examples.png`` (image, foreground / background views, zero-shot vs tuned); one MLflow run
holds the config, the metrics, the per-group table and the figure.

With ``check`` (:class:`unspur.config.AdaptCheckConfig`) the labelled check split (val) is tuned
first, the same way, into ``<out>/check/``; when SEraser does not help there
(:func:`unspur.seraser.check_verdict`), no image of ``split`` is tuned: every row keeps the
zero-shot prediction, status ``zero_shot``, the check's numbers as the reason. ``metrics.json``,
MLflow and the pipeline report carry the verdict.

    unspur adapt --out runs/adapt checkpoint=runs/flyp/model images=runs/synth masks=runs/masks/masks
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from unspur.actors.prompt_tuner import PromptTunerActor
from unspur.config import AdaptConfig, ConfigError, dump_config
from unspur.io import write_json_atomic, write_parquet_atomic
from unspur.metrics import summarize
from unspur.workflows.image_table import (
    RowPlan,
    attach_masks,
    mask_index,
    plan_rows,
    read_rows,
    read_table,
    table_columns,
)
from unspur.workflows.job import init_ray, main_for
from unspur.workflows.masks.store import ShardStore, resolve_fs

__all__ = [
    "CONFIG",
    "PREDICTION_SCHEMA",
    "Inputs",
    "build",
    "main",
    "mask_index",
    "outputs",
    "prepare",
    "run",
]

CONFIG = AdaptConfig
#: Parquet schema of a predictions shard (ARCHITECTURE.md predictions contract)
PREDICTION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int64()),
        ("group", pa.string()),
        ("pred_before", pa.int64()),
        ("pred", pa.int64()),
        ("probs_before", pa.list_(pa.float32())),
        ("probs", pa.list_(pa.float32())),
        ("status", pa.string()),
        ("error", pa.string()),
        ("loss_start", pa.float64()),
        ("loss_end", pa.float64()),
    ]
)
STATUSES = ("ok", "zero_shot", "error")


@dataclass
class Inputs:
    """Resolved inputs: the image table and the columns read, the masks table, the model's classes."""

    images: str
    columns: list[str]
    masks: str
    classes: list[str]


def _exists(uri: str) -> bool:
    fs, path = resolve_fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _check_prompt(cfg: AdaptConfig, model_cfg: Any) -> None:
    """A context_init / n_ctx pair that cannot work fails here, not in every actor."""
    import open_clip

    from unspur.models.prompt import context_token_ids

    s = cfg.seraser
    if s.context_init is not None and s.n_ctx is not None:
        found = len(context_token_ids(open_clip.get_tokenizer(model_cfg.name), s.context_init))
        if found != s.n_ctx:
            raise ConfigError(
                f"seraser.context_init {s.context_init!r} is {found} tokens in open_clip's tokenizer, not "
                f"seraser.n_ctx={s.n_ctx}: set n_ctx={found} (or null) or another context_init"
            )


def _check_labels(images: str, names: list[str], classes: list[str], split: str | None) -> None:
    """The table's (label, class_name) pairs must follow the checkpoint's class order."""
    if "class_name" not in names:
        return
    table = read_table(images, ["label", "class_name"] + (["split"] if split else []))
    if split:
        table = table.filter(pc.equal(table["split"], split))
    pairs = set(zip(table.column("label").to_pylist(), table.column("class_name").to_pylist(), strict=True))
    bad = sorted((lab, name) for lab, name in pairs if not 0 <= lab < len(classes) or classes[lab] != name)
    if bad:
        raise ConfigError(
            f"image table {images}: (label, class_name) {bad[:3]} do not match the checkpoint's classes "
            f"{classes} (label i must be classes[i])"
        )


def prepare(cfg: AdaptConfig) -> Inputs:
    """Check the checkpoint (a clip model with classes), the image table and the masks table."""
    from unspur.models import checkpoint_model_config

    model_cfg = checkpoint_model_config(cfg.checkpoint)
    if getattr(model_cfg, "family", "timm") != "clip" or not model_cfg.classes:
        raise ConfigError(
            f"checkpoint {cfg.checkpoint} must be a clip-family model with zero-shot classes "
            f"(model.family clip, model.classes set); got family {getattr(model_cfg, 'family', 'timm')!r}"
        )
    _check_prompt(cfg, model_cfg)
    for what, uri in (("images", cfg.images), ("masks", cfg.masks)):
        if not _exists(uri):
            raise ConfigError(f"{what} table {uri} does not exist; set {what} to a Parquet file or folder")
    names = table_columns(cfg.images)
    if "image_id" not in names or "label" not in names or not ({"image", "path"} & set(names)):
        raise ConfigError(f"image table {cfg.images} needs image_id, label and image or path; has {names}")
    if cfg.split is not None and "split" not in names:
        raise ConfigError(f"split={cfg.split!r} is set but image table {cfg.images} has no split column")
    _check_labels(cfg.images, names, list(model_cfg.classes), cfg.split)
    columns = ["image_id", "label"] + [c for c in ("image", "path", "group", "split") if c in names]
    return Inputs(cfg.images, columns, cfg.masks, list(model_cfg.classes))


class PredictionShardWriter:
    """Prompt-tuner actor + shard writer: tunes a batch, writes it as one atomic shard, returns counts."""

    def __init__(
        self,
        checkpoint: str,
        seraser: dict[str, Any],
        store: str,
        device: str,
        threads: int,
        zero_shot_reason: str = "",
    ) -> None:
        self.tune = PromptTunerActor(checkpoint, seraser, device, threads, zero_shot_reason)
        self.store = ShardStore(store, PREDICTION_SCHEMA)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows = self.tune(batch)
        seconds = time.perf_counter() - start
        if len(rows["image_id"]):
            self.store.write({k: list(rows[k]) for k in PREDICTION_SCHEMA.names})
        status = Counter(rows["status"].tolist())
        counts = {"images": len(rows["image_id"]), **{s: status[s] for s in STATUSES}}
        return {**{k: np.array([v], np.int64) for k, v in counts.items()}, "seconds": np.array([seconds])}


def _store(cfg: AdaptConfig) -> ShardStore:
    return ShardStore(str(Path(cfg.out) / "predictions"), PREDICTION_SCHEMA)


def _threads(cfg: AdaptConfig) -> int:
    return cfg.compute.threads or max(1, int(cfg.compute.num_cpus))


def build(
    cfg: AdaptConfig, inputs: Inputs | None = None, plan: RowPlan | None = None, zero_shot_reason: str = ""
) -> ray.data.Dataset:
    """The unexecuted pipeline over the images not yet written (default: planned here);
    ``zero_shot_reason`` set: no image is tuned (a failed check), each row says why."""
    inputs = inputs or prepare(cfg)
    store = _store(cfg)
    if plan is None:
        store.remove_partial()
        plan = plan_rows(inputs.images, inputs.columns, store.done_ids(), [cfg.split] if cfg.split else None)
    todo = plan.wanted - store.done_ids()
    c = cfg.compute
    ds = read_rows(plan).map_batches(
        attach_masks,
        batch_format="pyarrow",
        fn_kwargs={"index": mask_index(inputs.masks, todo), "source": inputs.masks},
    )
    return ds.map_batches(
        PredictionShardWriter,
        fn_constructor_kwargs={
            "checkpoint": cfg.checkpoint,
            "seraser": cfg.seraser.model_dump(mode="json"),
            "store": store.uri,
            "device": c.device,
            "threads": _threads(cfg),
            "zero_shot_reason": zero_shot_reason,
        },
        compute=ray.data.ActorPoolStrategy(min_size=c.min_actors, max_size=c.max_actors),
        batch_size=c.batch_size,
        batch_format="numpy",
        num_cpus=c.num_cpus,
        num_gpus=c.num_gpus,
    )


def _execute(cfg: AdaptConfig, inputs: Inputs, zero_shot_reason: str = "") -> tuple[dict[str, Any], set[str]]:
    store = _store(cfg)
    store.remove_partial()
    plan = plan_rows(inputs.images, inputs.columns, store.done_ids(), [cfg.split] if cfg.split else None)
    totals: Counter[str] = Counter()
    seconds = 0.0
    start = time.perf_counter()
    if plan.counts["to_do"] > 0:
        init_ray()  # only now: inputs checked (prepare), and a finished run needs no Ray
        for row in build(cfg, inputs, plan, zero_shot_reason).iter_rows():
            totals.update({k: int(v) for k, v in row.items() if k != "seconds"})
            seconds += float(row["seconds"])
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {**plan.counts, **{k: totals[k] for k in ("images", *STATUSES)}}
    summary["wall_s"] = round(wall, 3)
    summary["images_per_s"] = totals["images"] / wall if totals["images"] else 0.0
    summary["actor_images_per_s"] = totals["images"] / seconds if seconds > 0 else 0.0
    summary["missing_images"] = len(plan.wanted - store.done_ids())
    summary["complete"] = summary["missing_images"] == 0
    return summary, plan.wanted


def compare(pred: pd.DataFrame) -> dict[str, Any]:
    """Zero-shot (``before``) vs tuned (``after``) metrics over the rows that are not errors, and
    the per-group table ``{group: {n, acc_before, acc}}``."""
    ok = pred[pred["status"] != "error"]
    labels, groups = ok["label"].to_numpy(), ok["group"].to_numpy()
    before = summarize(ok["pred_before"].to_numpy(), labels, groups)
    after = summarize(ok["pred"].to_numpy(), labels, groups)
    sizes = ok["group"].value_counts()
    table = {
        g: {"n": int(sizes[g]), "acc_before": before["per_group"][g], "acc": after["per_group"][g]}
        for g in sorted(after["per_group"])
    }
    changed = float((ok["pred"] != ok["pred_before"]).mean()) if len(ok) else 0.0
    counts = pred["status"].value_counts()
    return {
        "before": before,
        "after": after,
        "per_group_table": table,
        "changed": changed,
        **{f"n_{s}": int(counts.get(s, 0)) for s in STATUSES},
    }


def _check_config(cfg: AdaptConfig) -> AdaptConfig:
    """The check's own run: ``check.split`` into ``<out>/check/``, no examples, no check."""
    update = {"out": str(Path(cfg.out) / "check"), "split": cfg.check.split, "check": None, "examples": 0}
    return cfg.model_copy(update=update)


def _check(cfg: AdaptConfig) -> dict[str, Any]:
    """Tune ``check.split`` (resumable, into ``<out>/check/``) and judge SEraser there ->
    ``{split, trusted, note, before, after, n, n_error}`` (before/after: acc, wga)."""
    from unspur.seraser import check_verdict

    check = cfg.check
    sub = _check_config(cfg)
    inputs = prepare(sub)
    Path(sub.out).mkdir(parents=True, exist_ok=True)
    _, wanted = _execute(sub, inputs)
    if not wanted:
        raise ConfigError(
            f"check.split {check.split!r} has no rows in image table {cfg.images}; "
            "name a labelled split the table holds (e.g. check.split=val) or set check=null"
        )
    pred = _store(sub).read(ids=wanted).to_pandas()
    tuned = pred[pred["status"] == "ok"]
    if tuned.empty:
        reasons = pred["error"].value_counts().head(2).index.tolist()
        raise ConfigError(
            f"check.split {check.split!r}: none of its {len(pred)} images could be tuned ({reasons}); "
            "give its images masks (the masks stage's splits) or set check=null"
        )
    write_parquet_atomic(pred, Path(sub.out) / "predictions.parquet")
    numbers = compare(tuned)
    before, after = ({k: numbers[w][k] for k in ("acc", "wga")} for w in ("before", "after"))
    trusted, note = check_verdict(before, after, check)
    write_json_atomic(numbers, Path(sub.out) / "metrics.json", indent=2, default=str)
    print(f"adapt check: {note}")
    return {
        "split": check.split,
        "trusted": trusted,
        "note": note,
        "before": before,
        "after": after,
        "n": len(tuned),
        "n_error": len(pred) - len(tuned),
    }


def _track(cfg: AdaptConfig, result: dict[str, Any], figure: Any) -> None:
    from unspur import tracking

    check = result.get("check")
    tags = {"check": check["note"]} if check else None  # why the predictions are tuned or zero-shot
    with tracking.start_run(cfg.out, cfg.experiment, run_name=f"adapt-{cfg.split or 'all'}", tags=tags):
        tracking.log_config(cfg)
        flat = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat.update({f"before.{k}": result["before"][k] for k in ("acc", "wga")})
        flat.update({k: result["after"][k] for k in ("acc", "wga")})
        if check:
            flat["check.trusted"] = int(check["trusted"])
            flat.update({f"check.before.{k}": v for k, v in check["before"].items()})
            flat.update({f"check.{k}": v for k, v in check["after"].items()})
        tracking.log_metrics(flat)
        table = result["per_group_table"]
        columns = {
            "group": list(table),
            **{k: [row[k] for row in table.values()] for k in ("n", "acc_before", "acc")},
        }
        tracking.log_dict(columns, "per_group_table.json")
        tracking.log_dict(result, "metrics.json")
        if figure is not None:
            tracking.log_figure(figure, "figures/seraser_examples.png")


def run(cfg: AdaptConfig) -> dict[str, Any]:
    """Check the checkpoint and both tables (before Ray starts), run the check (when set), tune every
    image not yet written (joining or starting Ray), then write predictions.parquet, metrics.json,
    examples.png."""
    inputs = prepare(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    check = _check(cfg) if cfg.check is not None else None
    summary, wanted = _execute(cfg, inputs, "" if check is None or check["trusted"] else check["note"])
    pred = _store(cfg).read(ids=wanted).to_pandas()
    predictions = write_parquet_atomic(pred, out / "predictions.parquet")
    result = {**summary, **compare(pred), "predictions": str(predictions.resolve())}
    if check is not None:
        result["check"] = check
    figure = None
    if cfg.examples:
        from unspur.workflows.adapt.report import examples_figure, pick_examples

        shown, shown_pred = cfg, pred
        if check is not None and not check["trusted"]:  # nothing tuned here: show the check's images
            shown = _check_config(cfg)  # same tables and classes: ``inputs`` serves it too
            shown_pred = pd.read_parquet(Path(shown.out) / "predictions.parquet")
        ids = pick_examples(shown_pred, cfg.examples)
        figure = examples_figure(shown, inputs, shown_pred, ids, mask_index(inputs.masks, set(ids)))
        result["examples_split"] = shown.split
    if figure is not None:
        figure.savefig(out / "examples.png", dpi=100)
        result["examples"] = str((out / "examples.png").resolve())
    result["evaluation"] = {**result["after"], "n_errors": result["n_error"]}
    write_json_atomic(result, out / "metrics.json", indent=2, default=str)
    done = "tuned" if check is None or check["trusted"] else "kept at zero-shot (the check failed)"
    print(
        f"adapt: {summary['images']} images {done} this run ({summary['already_done']} done before); "
        f"acc {result['before']['acc']:.3f} -> {result['after']['acc']:.3f}, "
        f"wga {result['before']['wga']:.3f} -> {result['after']['wga']:.3f}; error rows {result['n_error']}"
    )
    if cfg.track:
        _track(cfg, result, figure)
    return result


def main(argv: list[str] | None = None) -> int:
    """``unspur adapt --config FILE --out DIR [key.sub=value ...]``; a checkpoint or table the user got
    wrong is a one-line error (exit code 2) before Ray starts."""
    return main_for("adapt", AdaptConfig, run, argv, needs_ray=False)


def outputs(cfg: AdaptConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``predictions`` and ``metrics``."""
    out = Path(cfg.out).resolve()
    return {"predictions": str(out / "predictions.parquet"), "metrics": str(out / "metrics.json")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
