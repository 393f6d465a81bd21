"""Throughput of the Ray Data mask pipeline over a bare loop running the same segmenter.

Both sides segment the same SpuriousWorld image table with the same segmenter (the shipped
tiny grounded_sam config: random-init tiny GroundingDINO + tiny SAM, 3 concepts per class) and
write the same Parquet shards. Bare loop: one process, ``MaskShardWriter`` called on batches read
with pyarrow, torch on ``--threads`` threads (default 1, what Ray gives an actor with a
fractional CPU). Pipeline: ``unspur.workflows.masks.job.execute`` on a local Ray (``ray.init`` not timed):
read -> filter -> actor pool (``--actors`` actors of ``--num-cpus`` CPUs) -> shards. With the
defaults (one actor, one thread each side) the ratio is the pipeline's cost on equal compute.

Two throughputs per side: end to end (all images / wall time, including imports in a fresh actor
process, model building and Ray Data start-up) and steady state (images after the first shard /
time from the first shard file to the last, from the shards' modification times; what a long
job sees). Runs alternate (bare, pipeline, bare, ...); medians are reported. Last line:
``ratio=<pipeline / bare steady-state images/s>``; the end-to-end ratio is printed above it.

    python benchmarks/mask_pipeline.py --images 160 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import unspur.actors.segmenters  # noqa: F401  (registers the segmenters segmenter.name may pick)
from unspur.config import MasksConfig, SpuriousWorldConfig, load_config
from unspur.data.spuriousworld import generate_tables

CONFIG = Path(__file__).resolve().parents[1] / "workflows" / "configs" / "masks_grounded_sam_tiny.yaml"


def _bare(cfg: MasksConfig, table: str, store: str) -> float:
    """Seconds for the bare loop over every row of ``table``."""
    from unspur.workflows.masks.job import MaskShardWriter, prepare

    start = time.perf_counter()
    inputs = prepare(cfg)
    writer = MaskShardWriter(inputs.segmenter.model_dump(mode="json"), inputs.concepts, store)
    for batch in pq.ParquetFile(table).iter_batches(
        batch_size=cfg.compute.batch_size, columns=inputs.columns
    ):
        writer({name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names})
    return time.perf_counter() - start


def _steady(store: str) -> float:
    """Images/s between the first and the last shard written to ``store`` (file modification times)."""
    shards = sorted(
        (p.stat().st_mtime, len(pq.read_table(p, columns=["image_id"]).column("image_id").unique()))
        for p in Path(store).glob("part-*.parquet")
    )
    if len(shards) < 2:
        raise RuntimeError(f"need at least 2 shards in {store} for a steady-state rate; use more --images")
    return sum(n for _, n in shards[1:]) / (shards[-1][0] - shards[0][0])


def _pipeline(cfg: MasksConfig, store: str) -> tuple[float, dict]:
    from unspur.workflows.masks.job import execute, plan_pass, prepare

    start = time.perf_counter()
    inputs = prepare(cfg)
    summary = execute(cfg, plan_pass(inputs, inputs.concepts, store))
    return time.perf_counter() - start, summary


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the bare loop")
    parser.add_argument("--num-cpus", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mask-pipeline-"))
    images, _ = generate_tables(SpuriousWorldConfig(n_train=args.images), splits=("train",))
    table = str(work / "images.parquet")
    pq.write_table(pa.Table.from_pandas(images, preserve_index=False), table)
    cfg = load_config(
        MasksConfig,
        CONFIG,
        [
            f"out={work / 'out'}",
            "synth=null",
            f"images={table}",
            "validation.enabled=false",
            "track=false",
            "overlays=0",
            f"compute.batch_size={args.batch_size}",
            "compute.min_actors=1",
            f"compute.max_actors={args.actors}",
            f"compute.num_cpus={args.num_cpus}",
        ],
    )
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    bare_s, pipe_s, bare_rate, pipe_rate = [], [], [], []
    for r in range(args.repeats):
        bare_s.append(_bare(cfg, table, str(work / f"bare-{r}")))
        bare_rate.append(_steady(str(work / f"bare-{r}")))
        seconds, summary = _pipeline(cfg, str(work / f"pipe-{r}"))
        if summary["images"] != args.images or not summary["complete"]:
            raise RuntimeError(f"pipeline did not process every image: {summary}")
        pipe_s.append(seconds)
        pipe_rate.append(_steady(str(work / f"pipe-{r}")))
    ray.shutdown()
    bare, pipe = statistics.median(bare_s), statistics.median(pipe_s)
    bare_ss, pipe_ss = statistics.median(bare_rate), statistics.median(pipe_rate)
    print(
        f"images={args.images}, batch_size={args.batch_size}, actors<={args.actors} x {args.num_cpus} CPU, "
        f"bare-loop threads={args.threads}, cores={os.cpu_count()}, repeats={args.repeats}"
    )
    for name, total, rate, runs in (
        ("bare loop", bare, bare_ss, bare_s),
        ("pipeline", pipe, pipe_ss, pipe_s),
    ):
        print(
            f"{name:9}: end to end {total:7.2f} s = {args.images / total:6.2f} images/s (runs {[round(x, 2) for x in runs]}); "
            f"steady state {rate:6.2f} images/s"
        )
    print(f"end-to-end ratio={bare / pipe:.3f}")
    ratio = pipe_ss / bare_ss
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
