"""Cost of one CFT train step relative to one ERM step (same model, same batch).

Both steps run the real training code (``unspur.training.train_one_epoch`` on a one-batch
loader): ERM = forward + CE + backward + AdamW step; CFT = forward with attention capture +
``autograd.grad`` to the attention maps + rollout + CFT loss + backward + AdamW step. Repeats
are interleaved (ERM, CFT, ERM, CFT, ...) so machine load hits both alike; the median of each
is reported. Last line: ``ratio=<median CFT step / median ERM step>``.

    python benchmarks/cft_step_ratio.py --model vit_tiny_synth --batch-size 16 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unspur.config import LossConfig, ModelConfig, TrainConfig
from unspur.losses import get_loss
from unspur.models import build_model
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


def _step_seconds(model, batch, loss_name: str, optimizer) -> float:
    spec, cfg = get_loss(loss_name), LossConfig(name=loss_name)
    start = time.perf_counter()
    train_one_epoch(model, [batch], spec, cfg, optimizer)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_synth")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    model = build_model(ModelConfig(name=args.model, num_classes=4, img_size=args.img_size))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
    batch = _batch(args.batch_size, args.img_size)
    times: dict[str, list[float]] = {"erm": [], "cft": []}
    for i in range(args.warmup + args.repeats):
        for name in ("erm", "cft"):
            seconds = _step_seconds(model, batch, name, optimizer)
            if i >= args.warmup:
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model={args.model} batch={args.batch_size} img={args.img_size} threads={torch.get_num_threads()} "
        f"repeats={args.repeats}"
    )
    print(f"erm_step_ms={med['erm'] * 1e3:.1f} cft_step_ms={med['cft'] * 1e3:.1f}")
    ratio = med["cft"] / med["erm"]
    print(f"ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
