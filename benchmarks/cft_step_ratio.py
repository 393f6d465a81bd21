"""Cost of one CFT train step relative to one ERM step (same model, same batch).

Both steps run the real training code (``unspur.training.train_one_epoch`` on a one-batch
loader): ERM = forward + CE + backward + AdamW step; CFT = forward with attention capture +
``autograd.grad`` to the attention maps + rollout + CFT loss + backward + AdamW step. Repeats
are interleaved (ERM, CFT, ERM, CFT, ...) so machine load hits both alike; the median of each
is reported. ``--relevance`` names the relevance method(s) of the CFT step (comma-separated, a
key of ``unspur.relevance.RELEVANCE``: rollout, attnlrp); with several, each is timed in the same
interleaved rounds and gets its own ratio line. Last line: ``ratio=<median CFT step / median ERM
step>`` of the last method named.

    python benchmarks/cft_step_ratio.py --model vit_tiny_synth --batch-size 16 --repeats 15
    python benchmarks/cft_step_ratio.py --relevance rollout,attnlrp --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unspur.config import LossConfig, ModelConfig, TrainConfig
from unspur.losses import get_loss
from unspur.models import build_model
from unspur.relevance import RELEVANCE
from unspur.training import make_optimizer, seed_everything, train_one_epoch


def _batch(batch_size: int, img_size: int) -> dict:
    masks = torch.zeros(batch_size, img_size, img_size)
    masks[:, img_size // 4 : 3 * img_size // 4, img_size // 4 : 3 * img_size // 4] = 1.0
    return {
        "image": torch.randn(batch_size, 3, img_size, img_size),
        "label": torch.randint(0, 4, (batch_size,)),
        "mask": masks,
        "has_mask": torch.ones(batch_size, dtype=torch.bool),
        "image_id": [f"bench-{i}" for i in range(batch_size)],
        "group": ["g"] * batch_size,
    }


def _step_seconds(model, batch, loss_name: str, optimizer, relevance: str = "rollout") -> float:
    spec, cfg = get_loss(loss_name), LossConfig(name=loss_name)
    start = time.perf_counter()
    train_one_epoch(model, [batch], spec, cfg, optimizer, relevance=relevance)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_synth")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument(
        "--relevance", default="rollout", help="relevance method(s) of the CFT step, comma-separated"
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.relevance.split(",") if m]
    unknown = sorted(set(methods) - set(RELEVANCE))
    if unknown or not methods:
        raise SystemExit(f"--relevance: unknown {unknown}; choose from {sorted(RELEVANCE)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    model = build_model(ModelConfig(name=args.model, num_classes=4, img_size=args.img_size))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
    batch = _batch(args.batch_size, args.img_size)
    steps = [("erm", "erm", "rollout")] + [(f"cft_{m}", "cft", m) for m in methods]
    times: dict[str, list[float]] = {name: [] for name, _, _ in steps}
    for i in range(args.warmup + args.repeats):
        for name, loss, relevance in steps:
            seconds = _step_seconds(model, batch, loss, optimizer, relevance)
            if i >= args.warmup:
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model={args.model} batch={args.batch_size} img={args.img_size} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}"
    )
    print(" ".join(f"{name}_step_ms={med[name] * 1e3:.1f}" for name, _, _ in steps))
    ratios = {m: med[f"cft_{m}"] / med["erm"] for m in methods}
    for method in methods:
        print(f"relevance={method} ratio={ratios[method]:.2f}")
    print(f"ratio={ratios[methods[-1]]:.2f}")
    return ratios[methods[-1]]


if __name__ == "__main__":
    main()
