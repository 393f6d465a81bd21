"""Cost of one StarFT train step relative to one FLYP step (same CLIP model, same batch).

Both steps run the real training code (``unspur.training.train_one_epoch`` on a one-batch
loader, family ``clip``): FLYP = image + caption forward, symmetric contrastive loss, backward,
AdamW step; StarFT = the same plus the student's spurious-caption features (in the same text
batch), the frozen teacher's image features and its spurious-caption features, the KL term.
The teacher is a frozen copy of the initial model, as ``fit`` / the finetune job build it; its
spurious-caption features and its image features come from the clip family's caches (captions
by token tuple, images by the dataset's ``view_id``), which are warm after the first step (the
warm-up steps), as in training from the second epoch on (a run's captions are a finite set, and
its images are seen again every epoch); ``--cold-cache`` empties both before every StarFT step:
the first epoch's cost, and what the caches save.

The model is random-init (built offline); images are random tensors, captions are
"a photo of a {class}." and the spurious captions are built-in templates picked per image id,
both tokenized with the family tokenizer. Repeats are interleaved (FLYP, StarFT, FLYP, ...) so
machine load hits both alike; the median of each is reported. Last line:
``flyp_ms=<median> starft_ms=<median> ratio=<starft / flyp>``.

    python benchmarks/starft_step_ratio.py --model unspur-tiny-clip --batch 32 --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from unspur.concept_bank import spurious_captions
from unspur.config import ClipModelConfig, TrainConfig
from unspur.losses import LOSSES, get_loss
from unspur.models.families import get_family
from unspur.spurious_templates import pick_template, run_templates
from unspur.training import make_optimizer, seed_everything, train_one_epoch

CLASSES = ["bird", "airplane", "bicycle", "tree"]


def _batch(cfg: ClipModelConfig, batch_size: int) -> dict:
    tokenizer = get_family("clip").tokenizer(cfg)
    templates = run_templates(None, ["background", "texture", "resolution"])
    labels = torch.arange(batch_size) % len(CLASSES)
    ids = [f"bench-{i:06d}" for i in range(batch_size)]
    names = [CLASSES[int(y)] for y in labels]
    spurious = [
        spurious_captions([pick_template(templates, i)], c)[0] for i, c in zip(ids, names, strict=True)
    ]
    return {
        "image": torch.randn(batch_size, 3, cfg.img_size, cfg.img_size),
        "tokens": tokenizer([f"a photo of a {c}." for c in names]),
        "spurious_tokens": tokenizer(spurious),
        "label": labels,
        "image_id": ids,
        "view_id": ids,
    }


def _step_seconds(model, teacher, batch, name: str, optimizer) -> float:
    spec = get_loss(name)
    loss_cfg = LOSSES.entry(name).config(**({"lam": 0.5, "decay": "none"} if name == "starft" else {}))
    start = time.perf_counter()
    train_one_epoch(
        model, [batch], spec, loss_cfg, optimizer, base_model=teacher, family="clip", epoch=0, epochs=1
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unspur-tiny-clip", help="unspur-tiny-clip or an open_clip name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument(
        "--cold-cache",
        action="store_true",
        help="empty the teacher caches (captions, image views) before every StarFT step: a first-epoch step",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    cfg = ClipModelConfig(name=args.model, img_size=args.img_size, classes=CLASSES)
    model = get_family("clip").build(cfg)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the frozen initial model, as fit builds it
    optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
    batch = _batch(cfg, args.batch)
    times: dict[str, list[float]] = {"flyp": [], "starft": []}
    for i in range(max(args.warmup, 1) + args.repeats):
        for name in ("flyp", "starft"):
            if args.cold_cache:
                teacher.__dict__.pop("_unspur_text_cache", None)
                teacher.__dict__.pop("_unspur_image_cache", None)
            seconds = _step_seconds(model, teacher, batch, name, optimizer)
            if i >= max(args.warmup, 1):
                times[name].append(seconds)
    cached = len(teacher.__dict__.get("_unspur_text_cache", {}))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model={args.model} batch={args.batch} img={args.img_size} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} cache={'cold' if args.cold_cache else 'warm'} cached_captions={cached}"
    )
    ratio = med["starft"] / med["flyp"]
    print(f"flyp_ms={med['flyp'] * 1e3:.1f} starft_ms={med['starft'] * 1e3:.1f} ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
