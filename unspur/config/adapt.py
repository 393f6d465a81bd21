"""Configs of ``unspur adapt``: SEraser's test-time prompt tuning (METHODS.md 4) and its job."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unspur.config.base import ActorPoolConfig, StrictModel

__all__ = ["AdaptComputeConfig", "AdaptConfig", "SEraserConfig"]


class SEraserConfig(StrictModel):
    """Test-time prompt tuning that erases spurious features, per image (episodic).

    Prompt: ``context_init`` gives the start of the shared context (``"a photo of a"`` is 4 tokens
    in open_clip's tokenizer, so the default context has 4 tokens and the untuned prompt is
    ``"a photo of a {class}."``; the paper's 3 tokens: ``context_init: "a photo of"``);
    ``n_ctx`` null = that token count, else it must match it; ``context_init`` null = ``n_ctx``
    random N(0, 0.02) tokens drawn with ``seed``.
    Views: foreground ``x*m + f*(1-m)`` and background ``x*(1-m) + f*m`` of the union ``m`` of the
    image's masks, ``f`` the ``fill`` (``black`` as published, ``grey`` 0.5, ``mean`` the image's
    mean colour, ``blur`` the image blurred with a Gaussian of ``blur_sigma`` x its side); the
    background batch also holds the all-fill image (all black as published). ``augment_views``
    adds that many random resized crops (scale ``min_scale``..1) + flips of each view, drawn
    from ``seed`` and the image id.
    Objective (:mod:`unspur.losses.seraser`): ``lambda_bg`` KL(U || p(y|x_bg)) + ``lambda_fg``
    H(p(y|x_fg)) (``fg_term: entropy``) or KL to the untuned prompt's foreground prediction
    (``fg_term: kl_reference``). Loop: AdamW (``lr``, ``weight_decay``: torch's default 0.01),
    ``steps`` steps, the context reset for every image; the raw image is then predicted with the
    tuned prompt. ``episodes`` images are tuned together (independent contexts, one text forward).
    ``on_missing_mask``: ``error`` (an image without a mask is an error row with the reason) or
    ``zero_shot`` (its row keeps the zero-shot prediction, status ``zero_shot``, reason kept).
    """

    context_init: str | None = "a photo of a"
    n_ctx: int | None = Field(None, ge=1)
    steps: int = Field(20, ge=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    fg_term: Literal["entropy", "kl_reference"] = "entropy"
    lambda_bg: float = Field(1.0, ge=0)
    lambda_fg: float = Field(1.0, ge=0)
    fill: Literal["black", "grey", "mean", "blur"] = "black"
    blur_sigma: float = Field(0.05, gt=0, description="fraction of the image side")
    augment_views: int = Field(0, ge=0)
    min_scale: float = Field(0.5, gt=0, le=1)
    episodes: int = Field(8, ge=1)
    seed: int = 0
    on_missing_mask: Literal["error", "zero_shot"] = "error"


class AdaptComputeConfig(ActorPoolConfig):
    """The prompt tuners' actor pool: each actor loads the model once and takes ``batch_size``
    images per call (one atomic shard each); ``device``: ``auto`` (CUDA when available), ``cpu``,
    ``cuda``; ``threads``: torch threads per actor (0 = ``max(1, int(num_cpus))``)."""

    batch_size: int = Field(16, ge=1)
    device: str = "auto"
    threads: int = Field(0, ge=0)


class AdaptConfig(StrictModel):
    """``unspur adapt``: image table + masks table + CLIP checkpoint -> predictions (Parquet).

    ``images``: the image table (``image_id``, ``image`` or ``path``, ``label``, optional
    ``group``/``split``); ``split``: only its rows (None = all). ``masks``: the masks table of
    ``unspur masks`` (``image_id``, ``rle``, ``status``; an image's mask is the union of its ok
    masks) or a parts table (``image_id``, ``part``, ``rle``). ``checkpoint``: a clip-family
    checkpoint whose ``model.classes`` are the labels' class names. Writes
    ``<out>/predictions/`` (shards; a rerun skips written images), ``predictions.parquet``,
    ``metrics.json`` (zero-shot vs tuned, per group) and ``examples.png``, and an MLflow run.
    """

    out: str = "runs/adapt"
    checkpoint: str
    images: str
    masks: str
    split: str | None = "test"
    seraser: SEraserConfig = Field(default_factory=SEraserConfig)
    compute: AdaptComputeConfig = Field(default_factory=AdaptComputeConfig)
    examples: int = Field(6, ge=0)
    experiment: str = "adapt"
    track: bool = True
