"""Configs of ``unspur adapt``: SEraser's test-time prompt tuning (METHODS.md 4) and its job."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unspur.config.base import ActorPoolConfig, StrictModel

__all__ = ["AdaptCheckConfig", "AdaptComputeConfig", "AdaptConfig", "SEraserConfig"]


#: how the removed region of a view is filled (:data:`unspur.seraser.FILLS`)
Fill = Literal["black", "grey", "mean", "blur"]


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
    background batch also holds the all-fill image (all black as published). ``fg_fill`` /
    ``bg_fill`` set the fill of the foreground views (what replaces the background) / of the
    background views and the all-fill image (what replaces the object) apart (None: ``fill``).
    ``augment_views``
    adds that many random resized crops (scale ``min_scale``..1) + flips of each view, drawn
    from ``seed`` and the image id.
    Objective (:mod:`unspur.losses.seraser`): ``lambda_bg`` KL(U || p(y|x_bg)) + ``lambda_fg``
    H(p(y|x_fg)) (``fg_term: entropy``) or KL to the untuned prompt's foreground prediction
    (``fg_term: kl_reference``), plus ``lambda_label`` x the cross-entropy of the raw image toward
    the foreground views' pseudo-label (the released code's ``LABEL`` option; 0 = the paper's
    objective). Loop: AdamW (``lr``, ``weight_decay``: torch's default 0.01),
    ``steps`` steps, the context reset for every image; ``stop_below``: an image's episode stops
    at the first step its objective is at most this (None: every step runs); the raw image is
    then predicted with the tuned prompt. ``episodes`` images are tuned together (independent contexts, one text forward).
    ``on_missing_mask``: ``error`` (an image without a mask is an error row with the reason) or
    ``zero_shot`` (its row keeps the zero-shot prediction, status ``zero_shot``, reason kept).
    """

    context_init: str | None = "a photo of a"
    n_ctx: int | None = Field(None, ge=1)
    steps: int = Field(20, ge=0)
    stop_below: float | None = Field(None, ge=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    fg_term: Literal["entropy", "kl_reference"] = "entropy"
    lambda_bg: float = Field(1.0, ge=0)
    lambda_fg: float = Field(1.0, ge=0)
    lambda_label: float = Field(0.0, ge=0)
    fill: Fill = "black"
    fg_fill: Fill | None = None
    bg_fill: Fill | None = None
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


class AdaptCheckConfig(StrictModel):
    """Check SEraser on a labelled split before trusting it (do no harm).

    The images of ``split`` (val by default; they need labels and masks) are tuned first. SEraser's
    predictions of the job's own split are kept only when, on the check split, its worst-group
    accuracy is at least ``min_gain`` above the zero-shot head's and its accuracy at most
    ``max_drop`` below (None: no bound), the rule of ``run.min_gain`` / ``run.max_drop``
    (:func:`unspur.training.improves`). Otherwise no image is tuned: every row keeps the zero-shot
    prediction, with status ``zero_shot`` and the check's numbers as the reason.
    """

    split: str = "val"
    min_gain: float = Field(0.0, ge=0)
    max_drop: float | None = Field(0.02, ge=0)


class AdaptConfig(StrictModel):
    """``unspur adapt``: image table + masks table + CLIP checkpoint -> predictions (Parquet).

    ``images``: the image table (``image_id``, ``image`` or ``path``, ``label``, optional
    ``group``/``split``); ``split``: only its rows (None = all). ``masks``: the masks table of
    ``unspur masks`` (``image_id``, ``rle``, ``status``; an image's mask is the union of its ok
    masks) or a parts table (``image_id``, ``part``, ``rle``). ``checkpoint``: a clip-family
    checkpoint whose ``model.classes`` are the labels' class names. Writes
    ``<out>/predictions/`` (shards; a rerun skips written images), ``predictions.parquet``,
    ``metrics.json`` (zero-shot vs tuned, per group) and ``examples.png``, and an MLflow run.
    ``check`` (:class:`AdaptCheckConfig`): tune a labelled split first (into ``<out>/check/``) and
    keep the zero-shot head on ``split`` when SEraser does not help there; None = no check.
    """

    out: str = "runs/adapt"
    checkpoint: str
    images: str
    masks: str
    split: str | None = "test"
    seraser: SEraserConfig = Field(default_factory=SEraserConfig)
    check: AdaptCheckConfig | None = None
    compute: AdaptComputeConfig = Field(default_factory=AdaptComputeConfig)
    examples: int = Field(6, ge=0)
    experiment: str = "adapt"
    track: bool = True

    @model_validator(mode="after")
    def _check_split(self) -> AdaptConfig:
        if self.check is not None and self.check.split == self.split:
            raise ValueError(
                f"check.split {self.check.split!r} is the split SEraser predicts; check on a held-out "
                "labelled split (e.g. check.split=val) or set check=null"
            )
        return self
