"""Configs of ``unspur finetune``: optimisation, few-shot protocol, model, data, execution.

The ``loss`` section is validated against the config class of the loss its ``name`` picks, the
``model`` section against the config class of the model family its ``family`` picks
(``unspur.losses.LOSSES``, ``unspur.config.model.MODEL_FAMILIES``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.config.model import ClipModelConfig, ModelConfig, ModelSection
from unspur.config.registered import registered, registered_default
from unspur.data.spuriousworld import SpuriousWorldConfig
from unspur.losses import LOSSES, LossConfig
from unspur.spurious_templates import SPURIOUS_KINDS

__all__ = [
    "FewShotConfig",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneRunConfig",
    "SpuriousCaptionConfig",
    "ClipModelConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
]


class TrainConfig(StrictModel):
    """Optimisation of one fine-tuning run (AdamW; per-step learning-rate schedule).

    ``schedule``: ``step`` multiplies the lr by ``lr_decay`` every ``lr_decay_every`` epochs
    (paper: x0.85 every 2 epochs), ``cosine`` anneals to 0 over ``epochs``, ``constant`` keeps it;
    all start with a linear warm-up over ``warmup_epochs``. ``freeze_norm`` keeps BatchNorm layers
    in eval mode (use it when few-shot batches are tiny). ``grad_clip`` 0 turns clipping off.
    ``num_threads`` 0: ``run.cpus_per_worker`` on Ray Train, else the torch thread count of the
    process that runs it; resolved into the config (README: Reproducibility). ``augment`` flips images.
    ``params`` picks what is trained: ``all``; ``attention`` (the blocks' attention layers only);
    ``qk`` (only the query and key projections: the model can change WHERE it looks but not what
    it sees there - the relevance-gaming-proof choice for small models trained from scratch).
    """

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    lr_decay: float = Field(0.85, gt=0, le=1)
    lr_decay_every: int = Field(2, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    freeze_norm: bool = False
    params: Literal["all", "attention", "qk"] = "all"
    augment: bool = False
    seed: int = 0
    num_threads: int = Field(0, ge=0)


class FewShotConfig(StrictModel):
    """Few-shot protocol: ``per_class`` images of each of ``class_fraction`` of the classes."""

    enabled: bool = False
    per_class: int = Field(3, ge=1)
    class_fraction: float = Field(0.5, gt=0, le=1)
    seed: int = 0


class SpuriousCaptionConfig(StrictModel):
    """Where StarFT's spurious captions come from (``data.spurious``; read only by losses whose
    batch holds ``spurious_tokens``). ``bank``: a concept bank (``concept_bank.json`` or its
    folder, written by ``unspur concepts``) whose kept ``spurious_templates`` of ``kinds`` are
    used; None = the built-in offline bank (``unspur.spurious_templates.SPURIOUS_TEMPLATES``).
    Each training image gets one of them, picked by a hash of its image id, its class filled in."""

    bank: str | None = None
    kinds: list[str] = Field(default_factory=lambda: ["background", "texture", "resolution"], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SpuriousCaptionConfig:
        unknown = [k for k in self.kinds if k not in SPURIOUS_KINDS]
        if self.bank is None and unknown:
            raise ValueError(
                f"data.spurious.kinds {unknown} are not kinds of the built-in spurious bank "
                f"({list(SPURIOUS_KINDS)}); set data.spurious.bank to a concept bank that has them"
            )
        return self


class FinetuneDataConfig(StrictModel):
    """Training data of ``unspur finetune``.

    ``images``: Parquet image table(s) (files or folders of shards; ARCHITECTURE.md contract) with
    a ``split`` column; ``masks``: the masks table (``image_id, concept, rle, status``) or a
    SpuriousWorld parts table (``image_id, part, rle``); an image's mask is the union of its rows.
    Without ``images``, ``spuriousworld`` is rendered into ``<out>/data`` (cached by config).
    ``eval_max_images`` caps the evaluation split (None = all of it). ``caption_column``: the
    image-table column holding each image's class caption (CLIP losses: FLYP, StarFT);
    ``spurious``: StarFT's spurious captions (:class:`SpuriousCaptionConfig`). ``regions``: the
    region flags of ``unspur discover`` (``flags.parquet``), read by losses whose batch holds
    region views (``ravl``); ``region_view``: how a region is shown to the model, ``crop`` (its box
    cut out and resized to the input) or ``in_place`` (the whole image, zero outside the box);
    ``region_paste``: also show each train image without a spurious region with one pasted in from
    another image (RaVL's counterfactual views, ``unspur.losses.ravl``).
    """

    images: list[str] | None = None
    masks: str | None = None
    spuriousworld: SpuriousWorldConfig | None = None
    train_split: str = "train"
    eval_split: str = "test"
    eval_max_images: int | None = Field(None, ge=1)
    loader_workers: int = Field(0, ge=0)
    caption_column: str = "caption"
    spurious: SpuriousCaptionConfig = Field(default_factory=SpuriousCaptionConfig)
    regions: str | None = None
    region_view: Literal["crop", "in_place"] = "crop"
    region_paste: bool = False

    @model_validator(mode="after")
    def _check(self) -> FinetuneDataConfig:
        if (self.images is None) == (self.spuriousworld is None):
            raise ValueError(
                "give exactly one of data.images (Parquet image tables) and "
                "data.spuriousworld (a SpuriousWorld config to render)"
            )
        return self


class FinetuneRunConfig(StrictModel):
    """Execution of ``unspur finetune``: Ray Train workers, checkpoints, tracking.

    ``num_workers`` 0 trains in this process (no Ray Train); N > 0 runs a TorchTrainer with N
    DDP workers (``use_gpu`` puts one GPU on each). Checkpoints go to ``storage_path/name``
    (default ``<out>/checkpoints``) every epoch; rerunning with the same name and storage path
    resumes from the latest one. ``max_failures`` worker-group restarts are allowed per run.
    MLflow (experiment ``experiment``) is written by rank 0 when ``track`` is on.
    ``select`` picks the weights saved as ``<out>/model``: the last epoch's, or those of the
    evaluated epoch (every ``eval_every``) with the best worst-group (``best_wga``) or average
    (``best_acc``) accuracy on ``data.eval_split``, which must then be a validation split. The
    starting weights are a candidate too (evaluated before the first epoch): when no epoch beats
    them they are kept unchanged, so fine-tuning never returns a model worse on that split. Ties
    go to the other accuracy, then the earlier epoch (the starting model first). ``min_gain`` and
    ``max_drop`` are margins against the starting model (``unspur.training.improves``): an epoch
    replaces it only when its selected accuracy is at least ``min_gain`` higher and its other
    accuracy (acc under best_wga, wga under best_acc) at most ``max_drop`` lower (unset: no bound),
    so a gain within the validation split's noise, or one paid for in the other accuracy, keeps
    the starting model.
    """

    name: str = "finetune"
    storage_path: str | None = None
    num_workers: int = Field(0, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(1, ge=1)
    select: Literal["last", "best_wga", "best_acc"] = "last"
    min_gain: float = Field(0.0, ge=0, le=1)
    max_drop: float | None = Field(None, ge=0, le=1)
    figure_images: int = Field(6, ge=0)
    experiment: str = "finetune"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> FinetuneRunConfig:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty folder name without '/', got {self.name!r}")
        return self


class FinetuneConfig(StrictModel):
    """``unspur finetune``: train a classifier with ``loss`` (a registered loss, ``unspur.losses``:
    erm, cft, robustvit; flyp, starft for a clip model; ``loss.name`` picks the loss's own config
    class) on Ray Train.

    ``init_from``: an unspur checkpoint folder to start from (the base model; also the frozen
    reference of the KL guard ``loss.lambda_kl``). ``relevance``: a key of
    ``unspur.relevance.RELEVANCE``. ``fewshot.enabled`` trains on ``per_class`` images of a
    ``class_fraction`` of the classes; evaluation always covers every class.
    """

    out: str = "runs/finetune"
    data: FinetuneDataConfig = Field(
        default_factory=lambda: FinetuneDataConfig(spuriousworld=SpuriousWorldConfig())
    )
    model: ModelSection = Field(default_factory=ModelConfig)
    loss: registered(LOSSES, default="cft") = Field(default_factory=registered_default(LOSSES, "cft"))
    relevance: str = "rollout"
    train: TrainConfig = Field(default_factory=TrainConfig)
    fewshot: FewShotConfig = Field(default_factory=FewShotConfig)
    init_from: str | None = None
    run: FinetuneRunConfig = Field(default_factory=FinetuneRunConfig)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if "regions" in LOSSES[self.loss.name].batch_keys and not self.data.regions:
            raise ValueError(
                f"loss {self.loss.name!r} reads region flags: set data.regions to the flags.parquet of "
                "`unspur discover`"
            )
        if self.data.region_paste and (
            "pasted" not in LOSSES[self.loss.name].batch_keys
            or getattr(self.loss, "push", None) != "contribution"
        ):
            raise ValueError(
                f"data.region_paste makes counterfactual views that only loss ravl with push: contribution "
                f"reads; loss {self.loss.name!r} (push {getattr(self.loss, 'push', None)!r}) would ignore them: "
                "drop data.region_paste or set loss.push=contribution"
            )
        needs_masks = LOSSES[self.loss.name].needs_relevance
        if needs_masks and self.data.masks is None and self.data.spuriousworld is None:
            raise ValueError(
                f"loss {self.loss.name!r} aligns relevance with masks: set data.masks to a "
                "masks or parts table, or use a loss without relevance (loss.name=erm)"
            )
        if self.loss.kl_weight > 0 and not self.init_from:
            raise ValueError(
                "loss.lambda_kl > 0 keeps the model close to its base model: set init_from "
                "to the base checkpoint, or loss.lambda_kl=0"
            )
        if self.run.select != "last" and self.data.eval_split in ("test", self.data.train_split):
            raise ValueError(
                f"run.select is {self.run.select!r} but data.eval_split is {self.data.eval_split!r}: "
                "choosing an epoch on the test or training split biases what it reports; set "
                "data.eval_split: val (or run.select: last)"
            )
        sw = self.data.spuriousworld
        n_classes = self.model.num_classes  # a clip model's classes may be filled from the data later
        if sw is not None and n_classes and len(sw.classes) != n_classes:
            raise ValueError(
                f"data.spuriousworld has {len(sw.classes)} classes but model.num_classes is "
                f"{n_classes}; make them equal"
            )
        return self
