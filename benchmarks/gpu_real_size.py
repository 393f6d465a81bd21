"""Real-size GPU figures: random-init real architectures through unspur's own code paths, no Ray.

What it measures (one ``key=value`` line per figure; medians after warm-up, seeds fixed):

- ``sam_encode``: SAM vit_h image encodes/s through the grounded_sam segmenter's ``set_image``
  (``SamPredictor.set_image``: resize to 1024, normalise, encode), fp32 and under bf16 autocast;
- ``sam_concepts``: per-image time of ``set_image`` + ``predict`` with 16 concepts over 1 concept
  (GroundingDINO-tiny + SAM vit_h, every kept box decoded by SAM's real mask decoder);
- ``grounded_sam``: images/s of the mask stage's Ray Data callable (``SegmenterActor``: decode,
  detect, SAM, RLE encode) at batches of 1, 4 and 16 images, 16 concepts per image. The actor
  handles a batch's rows one after another, so the batch size only changes per-call overhead;
- ``cft_step``: one CFT and one ERM train step of timm ``vit_base_patch16_224`` (fused
  attention off, as unspur builds it) at batch 32 through ``unspur.training.train_one_epoch``,
  interleaved as in ``benchmarks/cft_step_ratio.py`` (target: ratio <= 1.5), plus images/s;
- ``flyp`` / ``starft``: one FLYP and one StarFT train step of CLIP ``ViT-B-32`` (open_clip, 224 px)
  at batch 256 through ``unspur.training.train_one_epoch`` (family ``clip``), interleaved; StarFT's
  frozen teacher with warm caches (spurious captions, image views), as from a run's second epoch
  on; images/s and the StarFT/FLYP ratio (``benchmarks/starft_step_ratio.py`` on a CPU);
- SEraser and RaVL: printed as ``skipped`` with the reason, never as numbers;
- peak GPU memory of each (``torch.cuda.max_memory_allocated``, reset before each measured call;
  ``n/a`` on a CPU).

All weights are random (nothing is downloaded): speed and memory do not depend on the values.
GroundingDINO is transformers' ``GroundingDinoConfig()`` default (the grounding-dino-tiny
architecture: Swin-T, BERT-base text encoder, 900 queries, 800 px short side). Its tokenizer is
built offline with bert-base-uncased's special-token ids and one token per word of the concepts
(about what bert-base-uncased gives for these words): timings depend on the token count, not the
vocabulary. Random-init detector logits are saturated (probabilities from 1e-20 to 1.0), so the
real-size thresholds are 0.999: about the top 1% of queries pass, a handful of boxes per concept
as with a trained detector; the box counts are printed (``sam_concepts_boxes_*``).

Imports beyond the standard library: torch, numpy, PIL, transformers, timm, yaml, safetensors,
open_clip (the flyp / starft figures) and
unspur (``unspur.config``, ``unspur.losses``, ``unspur.models``, ``unspur.training``,
``unspur.actors.segmenters``, ``unspur.actors.grounded_sam``, ``unspur.actors.segmenter_models``),
which need pydantic, segment-anything and pycocotools. No ray, mlflow, pandas or pyarrow.

Running it on a GPU machine without network access whose Python (3.12) has torch, torchvision,
transformers, timm, numpy, pillow, pyyaml and safetensors but lacks the rest: on a machine with
network access, in the repository root, download these wheels for cp312 manylinux x86_64 into
``.whl/`` (``--no-deps``: these versions resolved together; pydantic needs typing-extensions
>= 4.16, carried in case the image's is older; numpy, pycocotools' one other need, is there):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl segment-anything==1.0 pycocotools==2.0.11 pydantic==2.14.4 pydantic-core==2.50.5 \\
        annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \\
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4

(about 5 MB in all; open_clip also needs regex and huggingface_hub, which transformers brings); copy the repository (with ``.whl/``) to the GPU machine, then there, in its root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_real_size.py

Expected run time on one H200: about 2-4 minutes (our estimate from FLOP counts, not measured:
model builds on the CPU ~30 s, the rest a few seconds per figure); it has not been run on a GPU yet.
``--only sam_encode,cft_step`` picks figures; ``--tiny`` runs the same code paths with tiny models
on a CPU in seconds (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub: everything is built from config

import numpy as np
import torch

#: the 16 concepts of benchmarks/mask_concepts_scaling.py (scripts here do not import each other)
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
FIGURES = ("sam_encode", "sam_concepts", "grounded_sam", "cft_step", "flyp", "starft", "seraser", "ravl")
#: figures whose code is not in unspur yet: the key printed and why
NOT_YET = {
    "seraser": (
        "seraser_cached_vs_naive",
        "SEraser's cached vs naive prompt tuning is not in this script yet (CPU: benchmarks/seraser_cache.py)",
    ),
    "ravl": ("ravl_regions_per_s", "RaVL's region embedder is not implemented in unspur yet"),
}


@dataclass(frozen=True)
class Sizes:
    """The models and the amount of work of one mode (real size or ``--tiny``)."""

    sam: str  # "vit_h" or "tiny"
    clip: str  # the CLIP architecture of the flyp / starft figures
    clip_img: int
    clip_batch: int
    detector: str  # "grounding_dino_tiny" (random init) or "tiny"
    classifier: str
    num_classes: int
    img_size: int
    train_batch: int
    image_hw: tuple[int, int]  # the segmenters' input images (H, W)
    thresholds: tuple[float, float]  # box_threshold, text_threshold
    max_boxes: int  # per concept
    warmup: int
    repeats: int
    concept_images: int
    actor_concepts: int  # concepts per image in the grounded_sam figure
    batches: tuple[int, ...]


REAL = Sizes("vit_h", "ViT-B-32", 224, 256, "grounding_dino_tiny", "vit_base_patch16_224", 1000, 224, 32, (480, 640), (0.999, 0.999), 4,
             warmup=3, repeats=10, concept_images=4, actor_concepts=16, batches=(1, 4, 16))  # fmt: skip
TINY = Sizes("tiny", "unspur-tiny-clip", 32, 4, "tiny", "vit_tiny_synth", 4, 64, 4, (48, 64), (0.35, 0.25), 2,
             warmup=0, repeats=1, concept_images=1, actor_concepts=4, batches=(1, 4, 16))  # fmt: skip


# ----------------------------------------------------------------------------- timing


class Meter:
    """Times a call and records its peak device memory (CUDA events on a GPU, else the wall clock)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """Run ``fn`` once; returns (seconds, peak GiB allocated during it; NaN on a CPU)."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start, float("nan")
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated(self.device) / 2**30

    def run(
        self, fns: dict[str, Callable[[], Any]], warmup: int, repeats: int
    ) -> dict[str, tuple[float, float]]:
        """Interleaved repeats of every ``fns`` entry; per name: (median seconds, max peak GiB)."""
        times: dict[str, list[float]] = {k: [] for k in fns}
        peaks: dict[str, float] = dict.fromkeys(fns, float("nan"))
        for i in range(warmup + repeats):
            for name, fn in fns.items():
                seconds, peak = self(fn)
                if i >= warmup:
                    times[name].append(seconds)
                    peaks[name] = peak if np.isnan(peaks[name]) else max(peaks[name], peak)
        return {k: (statistics.median(times[k]), peaks[k]) for k in fns}


def emit(key: str, value: Any) -> None:
    """Print one ``key=value`` line (floats to 4 significant digits, NaN memory as ``n/a``)."""
    if isinstance(value, float):
        value = "n/a" if np.isnan(value) else f"{value:.4g}"
    print(f"{key}={value}", flush=True)


# ----------------------------------------------------------------------------- models


def bert_like_tokenizer(words: list[str]) -> Any:
    """An offline WordPiece tokenizer with bert-base-uncased's size (30522) and special-token ids
    ([CLS]=101, [SEP]=102, "."=1012, which GroundingDINO's text masks rely on), one token per word
    of ``words`` and single letters as sub-words for anything else."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(30522)]
    for idx, tok in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]"), (1012, "."),
                     (1029, "?")):  # fmt: skip
        vocab[idx] = tok
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = list(letters) + [f"##{c}" for c in letters] + list("-,'!()/&")
    for i, piece in enumerate(pieces):
        vocab[200 + i] = piece
    for i, word in enumerate(sorted({w for text in words for w in text.split()} - set(pieces))):
        vocab[2000 + i] = word
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)})


def build_grounded_sam(sizes: Sizes, device: torch.device, seed: int) -> Any:
    """The grounded_sam segmenter (``GroundedSam``) of ``sizes``: tiny models through unspur's
    loaders, or random-init GroundingDINO-tiny + SAM ``sizes.sam`` (built on the CPU with ``seed``,
    so every machine gets the same weights, then moved to ``device``)."""
    from unspur.actors.grounded_sam import GroundedSam
    from unspur.actors.segmenter_api import GroundedSamConfig
    from unspur.actors.segmenter_models import TINY, Detector, load_detector, load_sam

    box, text = sizes.thresholds
    cfg = GroundedSamConfig(
        detector=sizes.detector if sizes.detector == TINY else "random-init",
        sam_model=sizes.sam,
        box_threshold=box,
        text_threshold=text,
        max_boxes_per_concept=sizes.max_boxes,
        seed=seed,
    )
    if sizes.detector == TINY:
        detector = load_detector(TINY, str(device), seed)
    else:
        from transformers import (
            GroundingDinoConfig,
            GroundingDinoForObjectDetection,
            GroundingDinoImageProcessor,
        )

        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval().to(device)
        detector = Detector(model, bert_like_tokenizer(CONCEPTS16), GroundingDinoImageProcessor())
    if sizes.sam == TINY:
        sam = load_sam(TINY, None, str(device), seed)
    else:  # load_sam reads real weights from a checkpoint; the same registry entry, left at random init
        from segment_anything import sam_model_registry

        torch.manual_seed(seed)
        sam = sam_model_registry[sizes.sam](checkpoint=None).eval().to(device)
    return GroundedSam(detector, sam, cfg, str(device))


def test_images(sizes: Sizes, n: int, seed: int) -> list[np.ndarray]:
    """``n`` (H, W, 3) uint8 images: smooth colour fields with a few rectangles (PNG-compressible)."""
    rng = np.random.default_rng(seed)
    h, w = sizes.image_hw
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        a = rng.uniform(0, 1, (3, 3))
        img = np.stack([a[c, 0] * yy + a[c, 1] * xx + a[c, 2] for c in range(3)], -1) * 160
        for _ in range(4):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.uniform(0, 255, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


# ----------------------------------------------------------------------------- figures


def fig_sam_encode(seg: Any, sizes: Sizes, meter: Meter, seed: int) -> None:
    image = test_images(sizes, 1, seed)[0]

    def encode() -> None:
        seg.set_image(image)

    def encode_bf16() -> None:
        with torch.autocast(device_type=meter.device.type, dtype=torch.bfloat16):
            seg.set_image(image)

    res = meter.run({"fp32": encode, "bf16": encode_bf16}, sizes.warmup, sizes.repeats)
    for name, (seconds, peak) in res.items():
        emit(f"sam_encode_{name}_img_per_s", 1.0 / seconds)
        emit(f"sam_encode_{name}_peak_mem_gb", peak)


def fig_sam_concepts(seg: Any, sizes: Sizes, meter: Meter, seed: int) -> None:
    images = test_images(sizes, sizes.concept_images, seed)
    fns: dict[str, Callable[[], Any]] = {}
    for i, image in enumerate(images):
        for n in (1, 16):
            fns[f"{n}_{i}"] = lambda image=image, n=n: (seg.set_image(image), seg.predict(CONCEPTS16[:n]))
    res = meter.run(fns, sizes.warmup, sizes.repeats)
    seg.set_image(images[0])
    for n in (1, 16):
        found = seg.detect(CONCEPTS16[:n])
        emit(f"sam_concepts_boxes_{n}", len({k for d in found for k in d.keys.tolist()}))
    med = {n: statistics.median(res[f"{n}_{i}"][0] for i in range(len(images))) for n in (1, 16)}
    emit("sam_concepts_1_ms", med[1] * 1e3)
    emit("sam_concepts_16_ms", med[16] * 1e3)
    emit("sam_concepts_ratio", med[16] / med[1])
    emit("sam_concepts_peak_mem_gb", max(p for _, p in res.values()))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def fig_grounded_sam(seg: Any, sizes: Sizes, meter: Meter, seed: int, device: torch.device) -> None:
    from unspur.actors.segmenters import SegmenterActor

    # The actor's loaders take real weights only from a hub id or checkpoint: build it on the tiny
    # models, then hand it the real-size random-init segmenter.
    actor = SegmenterActor(
        {
            "name": "grounded_sam",
            "device": str(device),
            "grounded_sam": {"detector": "tiny", "sam_model": "tiny"},
        },
        {"bird": CONCEPTS16[: sizes.actor_concepts]},
    )
    actor.segmenter = seg
    data = [_png(img) for img in test_images(sizes, max(sizes.batches), seed)]
    concepts = CONCEPTS16[: sizes.actor_concepts]
    peaks = []
    for b in sizes.batches:
        batch = {
            "image_id": np.array([f"img-{i}" for i in range(b)], dtype=object),
            "class_name": np.array(["bird"] * b, dtype=object),
            "image": np.array(data[:b], dtype=object),
        }
        outs: list[dict[str, np.ndarray]] = []
        seconds, peak = meter.run(
            {"b": lambda batch=batch, outs=outs: outs.append(actor(batch))}, sizes.warmup, sizes.repeats
        )["b"]
        errors = [e for s, e in zip(outs[0]["status"], outs[0]["error"], strict=True) if s == "error"]
        if errors:  # the actor turns exceptions into error rows: such a timing would be meaningless
            raise RuntimeError(f"grounded_sam returned error rows: {errors[0]}")
        if len(outs[0]["status"]) != b * len(concepts):
            raise RuntimeError(
                f"grounded_sam returned {len(outs[0]['status'])} rows, expected {b * len(concepts)}"
            )
        emit(f"grounded_sam_b{b}_img_per_s", b / seconds)
        peaks.append(peak)
    emit("grounded_sam_peak_mem_gb", max(peaks))


def _train_batch(sizes: Sizes) -> dict[str, Any]:
    n, s = sizes.train_batch, sizes.img_size
    masks = torch.zeros(n, s, s)
    masks[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1.0
    return {
        "image": torch.randn(n, 3, s, s),
        "label": torch.randint(0, sizes.num_classes, (n,)),
        "mask": masks,
        "has_mask": torch.ones(n, dtype=torch.bool),
        "image_id": [f"bench-{i}" for i in range(n)],
        "group": ["g"] * n,
    }


def fig_cft_step(sizes: Sizes, meter: Meter, device: torch.device) -> None:
    from unspur.config import LossConfig, ModelConfig, TrainConfig
    from unspur.losses import get_loss
    from unspur.models import build_model
    from unspur.training import make_optimizer, train_one_epoch

    cfg = ModelConfig(name=sizes.classifier, num_classes=sizes.num_classes, img_size=sizes.img_size)
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
    batch = _train_batch(sizes)

    def step(name: str) -> Callable[[], Any]:
        spec, loss_cfg = get_loss(name), LossConfig(name=name)
        return lambda: train_one_epoch(model, [batch], spec, loss_cfg, optimizer)

    res = meter.run({"erm": step("erm"), "cft": step("cft")}, sizes.warmup, sizes.repeats)
    for name, (seconds, peak) in res.items():
        emit(f"{name}_step_ms", seconds * 1e3)
        emit(f"{name}_img_per_s", sizes.train_batch / seconds)
        emit(f"{name}_step_peak_mem_gb", peak)
    emit("cft_erm_ratio", res["cft"][0] / res["erm"][0])


def fig_clip_steps(sizes: Sizes, meter: Meter, device: torch.device) -> None:
    """FLYP and StarFT train steps of one CLIP model on one batch, interleaved."""
    import copy

    from unspur.config import ClipModelConfig, TrainConfig
    from unspur.losses import LOSSES, get_loss
    from unspur.models.families import get_family
    from unspur.training import make_optimizer, train_one_epoch

    classes = ["bird", "airplane", "bicycle", "tree"]
    family = get_family("clip")
    cfg = ClipModelConfig(name=sizes.clip, img_size=sizes.clip_img, classes=classes)
    model = family.build(cfg).to(device)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
    tokenizer = family.tokenizer(cfg)
    n = sizes.clip_batch
    names = [classes[i % len(classes)] for i in range(n)]
    ids = [f"bench-{i}" for i in range(n)]
    batch = {
        "image": torch.randn(n, 3, sizes.clip_img, sizes.clip_img),
        "label": torch.arange(n) % len(classes),
        "tokens": tokenizer([f"a photo of a {c}." for c in names]),
        "spurious_tokens": tokenizer(
            [f"a photo of a {c} on {('water', 'grass')[i % 2]}." for i, c in enumerate(names)]
        ),
        "image_id": ids,
        "view_id": ids,
    }

    def step(name: str) -> Callable[[], Any]:
        spec = get_loss(name)
        loss_cfg = LOSSES.entry(name).config(**({"decay": "none"} if name == "starft" else {}))
        return lambda: train_one_epoch(
            model, [batch], spec, loss_cfg, optimizer, base_model=teacher, family="clip", epoch=0, epochs=1
        )

    res = meter.run({"flyp": step("flyp"), "starft": step("starft")}, max(sizes.warmup, 1), sizes.repeats)
    for name, (seconds, peak) in res.items():
        emit(f"{name}_step_ms", seconds * 1e3)
        emit(f"{name}_img_per_s", n / seconds)
        emit(f"{name}_step_peak_mem_gb", peak)
    emit("starft_flyp_ratio", res["starft"][0] / res["flyp"][0])


# ----------------------------------------------------------------------------- entry


def parse_only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise SystemExit(f"--only: unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    return [f for f in FIGURES if f in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models, little work (a CPU smoke run)")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma list of figures: {','.join(FIGURES)}"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per figure (0 = the mode's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures = parse_only(args.only)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else REAL
    if args.repeats > 0:
        sizes = replace(sizes, repeats=args.repeats)
    device = torch.device(args.device)
    meter = Meter(device)
    emit("mode", "tiny" if args.tiny else "real")
    emit("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    emit("torch", torch.__version__)
    from unspur.training import seed_everything

    seed_everything(args.seed)
    seg = None
    for i, fig in enumerate(figures):
        if fig in NOT_YET:
            key, reason = NOT_YET[fig]
            print(f'{key}=skipped reason="{reason}"', flush=True)
            continue
        if fig == "cft_step":
            fig_cft_step(sizes, meter, device)
            continue
        if fig == "starft" and "flyp" in figures:
            continue  # timed together with flyp
        if fig in ("flyp", "starft"):
            fig_clip_steps(sizes, meter, device)
            continue
        if seg is None:
            start = time.perf_counter()
            seg = build_grounded_sam(sizes, device, args.seed)
            emit("grounded_sam_build_s", time.perf_counter() - start)
        if fig == "sam_encode":
            fig_sam_encode(seg, sizes, meter, args.seed)
        elif fig == "sam_concepts":
            fig_sam_concepts(seg, sizes, meter, args.seed)
        else:
            fig_grounded_sam(seg, sizes, meter, args.seed, device)
        if not set(figures[i + 1 :]) & {"sam_encode", "sam_concepts", "grounded_sam"}:
            seg = None  # free its weights: later figures' peak memory is their own
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
