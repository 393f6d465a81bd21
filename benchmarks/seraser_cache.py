"""SEraser's encode-once loop against the naive loop (re-encoding every view at every step).

Both run :meth:`unspur.seraser.PromptTuner.run` on the same images, masks and config: ``cached``
encodes the foreground / background views and the raw images once, then each of the ``steps``
AdamW steps runs only the text side (all images' episodes in one text forward); ``naive``
re-encodes every view at every step. The model is an open_clip architecture at random init (no
download); the images are SpuriousWorld renders with their object masks. Repeats alternate
(cached, naive, ...); medians. Last line: ``speedup=<naive / cached> same_predictions=<bool>``.

    python benchmarks/seraser_cache.py --model ViT-B-32 --img-size 224 --images 4 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unspur.config import ClipModelConfig, SEraserConfig, SpuriousWorldConfig
from unspur.data.spuriousworld import render_sample
from unspur.models.families import get_family
from unspur.seraser import PromptTuner


def _images(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    world = SpuriousWorldConfig(image_size=size, n_test=max(n, 1))
    samples = [render_sample(world, "test", i) for i in range(n)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0 for s in samples])
    masks = torch.stack([torch.from_numpy(s.object_mask) for s in samples])
    return images, masks, [f"test-{i:06d}" for i in range(n)], world.classes


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--augment-views", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images, masks, ids, classes = _images(args.images, args.img_size)
    torch.manual_seed(0)
    model_cfg = ClipModelConfig(name=args.model, img_size=args.img_size, classes=classes)
    family = get_family("clip")
    model = family.build(model_cfg)
    cfg = SEraserConfig(steps=args.steps, augment_views=args.augment_views, episodes=args.images)
    tuner = PromptTuner(model, family.tokenizer(model_cfg), classes, cfg)
    times: dict[str, list[float]] = {"cached": [], "naive": []}
    results = {}
    for _ in range(args.repeats):
        for name in ("cached", "naive"):
            start = time.perf_counter()
            results[name] = tuner.run(images, masks, ids, cached=name == "cached")
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    cached, naive = results["cached"], results["naive"]
    same = bool(torch.equal(cached.tuned.argmax(1), naive.tuned.argmax(1)))
    views = 1 + args.augment_views, 2 + args.augment_views
    print(
        f"model={args.model} img={args.img_size} images={args.images} classes={len(classes)} steps={args.steps} "
        f"views_fg={views[0]} views_bg={views[1]} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(
        f"cached_s={med['cached']:.2f} naive_s={med['naive']:.2f} "
        f"max_logit_diff={float((cached.tuned - naive.tuned).abs().max()):.2e} "
        f"changed_by_tuning={int((cached.tuned.argmax(1) != cached.zero_shot.argmax(1)).sum())}/{args.images}"
    )
    speedup = med["naive"] / med["cached"]
    print(f"speedup={speedup:.2f} same_predictions={same}")
    return speedup


if __name__ == "__main__":
    main()
