"""Per-image time of the grounded_sam segmenter with 16 concepts over 1 concept (tiny models).

The segmenter encodes each image once (SAM ``set_image``) and answers every concept from the
cached embedding: one detector pass over the merged prompt, all boxes through one batched
``predict_torch``. A naive per-concept loop re-encodes the image for every concept (~16x); it is
timed too, for reference. Models: the random-init tiny GroundingDINO and tiny SAM (img_size 256)
of ``segmenter.grounded_sam.{detector,sam_model}=tiny``, thresholds of the shipped tiny config;
images: SpuriousWorld train images. Repeats are interleaved (1, 16, naive, 1, 16, ...) so
machine load hits all alike; medians are reported. Last line: ``ratio=<16-concept / 1-concept>``.

    python benchmarks/mask_concepts_scaling.py --images 12 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from unspur.actors.segmenters import build_segmenter
from unspur.config import MasksConfig, SpuriousWorldConfig, load_config
from unspur.data.images import decode_rgb
from unspur.data.spuriousworld import sample_rows

CONFIG = Path(__file__).resolve().parents[1] / "workflows" / "configs" / "masks_grounded_sam_tiny.yaml"
CONCEPTS16 = [
    "long beak",
    "wings",
    "feather",
    "tail",
    "eye",
    "claw",
    "crest",
    "breast",
    "fuselage",
    "swept wing",
    "windshield",
    "bicycle wheel",
    "handlebar",
    "pedals",
    "trunk",
    "leafy crown",
]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = least noisy)")
    parser.add_argument("--prompt-mode", choices=["merged", "per_concept"], default="merged")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(MasksConfig, CONFIG)
    gs = cfg.segmenter.grounded_sam.model_copy(update={"prompt_mode": args.prompt_mode})
    seg = build_segmenter(cfg.segmenter.model_copy(update={"device": "cpu", "grounded_sam": gs}))
    world = SpuriousWorldConfig(image_size=args.image_size, n_train=args.images)
    images = [decode_rgb(sample_rows(world, "train", i)[0]["image"]) for i in range(args.images)]

    def one(image, concepts):
        seg.set_image(image)
        return seg.predict(concepts)

    def naive(image, concepts):
        for c in concepts:
            seg.set_image(image)
            seg.predict([c])

    one(images[0], CONCEPTS16)  # warm-up
    times: dict[str, list[float]] = {"1": [], "16": [], "naive16": []}
    boxes: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for image in images:
            times["1"].append(_time(lambda image=image: one(image, CONCEPTS16[:1])))
            times["16"].append(_time(lambda image=image: one(image, CONCEPTS16)))
            times["naive16"].append(_time(lambda image=image: naive(image, CONCEPTS16)))
    for key, concepts in (("1", CONCEPTS16[:1]), ("16", CONCEPTS16)):
        seg.set_image(images[0])
        found = seg.detect(concepts)
        boxes[key] = (sum(len(d.keys) for d in found), len({k for d in found for k in d.keys.tolist()}))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"images={args.images} x repeats={args.repeats}, {args.image_size}px, torch threads={args.threads}, "
        f"prompt_mode={args.prompt_mode}"
    )
    for key in ("1", "16"):
        print(
            f"image 0, {key:>2} concepts: {boxes[key][0]} kept boxes, {boxes[key][1]} distinct boxes decoded by SAM"
        )
    for key in ("1", "16", "naive16"):
        print(f"median per-image time, {key:>7} concepts: {med[key] * 1000:8.2f} ms")
    print(f"naive per-concept loop / 1 concept: {med['naive16'] / med['1']:.2f}")
    ratio = med["16"] / med["1"]
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
