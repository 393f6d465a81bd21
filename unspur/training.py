"""The core train / evaluate loop, pure torch (no ray): used in-process and inside Ray Train.

``train_one_epoch`` runs one pass of any registered loss (``unspur.losses.LOSSES``) on any model
family (``unspur.models.families.FAMILIES``): per batch it moves the entries the loss reads
(``LossSpec.batch_keys``) to the model's device, asks the family for the outputs the loss needs
(``LossSpec.outputs_for``: relevance maps only for losses that read them, the frozen base
model's logits only when the KL guard is on, its ``teacher_*`` outputs for StarFT), and steps on
the loss. ``evaluate`` is the
family's evaluation (accuracy, worst-group accuracy and, optionally, relevance alignment).
Everything works on a DDP-wrapped model too: hooks go to the bare module
(``unspur.models.unwrap``), the forward through the wrapper.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from unspur.config import FewShotConfig, TrainConfig
from unspur.models.families import RelevanceFn, get_family

__all__ = [
    "FewShotConfig",
    "NonFiniteLossError",
    "TrainConfig",
    "apply_trainable",
    "evaluate",
    "fit",
    "improves",
    "make_optimizer",
    "make_scheduler",
    "seed_everything",
    "selection_note",
    "SELECT_ORDER",
    "selection_score",
    "set_norm_eval",
    "train_one_epoch",
]

Batch = dict[str, Any]
_COUNTS = ("n_no_mask",)  # terms summed over the epoch instead of averaged


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; ``image_ids`` names the batch that produced it."""

    def __init__(self, image_ids: list[str], terms: dict[str, float]) -> None:
        self.image_ids = image_ids
        self.terms = terms
        super().__init__(
            f"non-finite loss {terms} on the batch with image ids {image_ids}; lower the learning rate, "
            "check these images and their masks, or turn on train.grad_clip"
        )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_norm_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics frozen)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _attention_layers(model: nn.Module, params: str) -> list[nn.Module]:
    from unspur.models import attention_modules, unwrap

    try:
        attention_modules(model)
    except ValueError as err:
        raise ValueError(
            f"train.params={params} needs transformer blocks: {err}; use train.params=all"
        ) from None
    layers = [b.attn for b in unwrap(model).blocks]
    if params == "qk" and not all(isinstance(getattr(a, "qkv", None), nn.Linear) for a in layers):
        raise ValueError(
            f"train.params=qk needs timm attention with a fused qkv Linear in every block; "
            f"{type(unwrap(model)).__name__} has none: use train.params=attention or all"
        )
    return layers


def _mask_value_rows(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    grad[2 * (grad.shape[0] // 3) :] = 0  # qkv rows are [query; key; value]
    return grad


def apply_trainable(model: nn.Module, params: str) -> int:
    """Freeze what ``train.params`` leaves out; returns the number of trainable parameters.

    ``all``: everything. ``attention``: parameters of ``blocks[i].attn`` only. ``qk``: the qkv
    projections only, with the value third of their rows held fixed (a gradient mask), so the
    model can change where it attends but not the features it reads. Call it before wrapping
    the model in DDP; calling it twice is harmless.
    """
    if params not in ("all", "attention", "qk"):
        raise ValueError(f"train.params must be all, attention or qk, got {params!r}")
    if params == "all":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    keep: set[int] = set()
    for attn in _attention_layers(model, params):
        if params == "attention":
            keep.update(id(p) for p in attn.parameters())
            continue
        for p in attn.qkv.parameters():
            keep.add(id(p))
            if not getattr(p, "_unspur_qk_mask", False):
                p.register_hook(_mask_value_rows)
                p._unspur_qk_mask = True  # type: ignore[attr-defined]
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters ``cfg.params`` selects (see :func:`apply_trainable`, applied here).

    Biases, norms and token/position embeddings get no weight decay; with ``params=qk`` neither
    do the qkv weights (their fixed value rows must not decay).
    """
    apply_trainable(model, cfg.params)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "reg_token"))
        flat = flat or getattr(p, "_unspur_qk_mask", False)
        (no_decay if flat else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then step decay / cosine / constant (see TrainConfig)."""
    steps_per_epoch = max(1, steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1.0, total - warmup))))
        if cfg.schedule == "step":
            return cfg.lr_decay ** ((step // steps_per_epoch) // cfg.lr_decay_every)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], batch: Batch) -> None:
    if not torch.isfinite(loss).all():
        values = {k: float(v.detach().float().mean()) for k, v in terms.items()}
        raise NonFiniteLossError([str(i) for i in batch["image_id"]], values)


def _on_device(batch: Batch, keys: tuple[str, ...], device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device``; every key in ``keys`` must be present."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(
            f"the loss reads batch entries {missing} that the training loader does not yield (it yields "
            f"{sorted(batch)}); build the dataset with the loss's batch_keys"
        )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_spec: Any,
    loss_cfg: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    base_model: nn.Module | None = None,
    relevance: str | RelevanceFn = "rollout",
    grad_clip: float = 0.0,
    freeze_norm: bool = False,
    family: str = "timm",
    epoch: int | None = None,
    epochs: int | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term (``n_no_mask`` summed).

    ``loss_spec``: a ``LossSpec`` (``batch_keys``, ``needs``, called as ``spec(outputs, batch,
    cfg)``); ``loss_cfg`` its config. ``family``: the model family (``model.family``) whose
    ``forward`` computes the outputs. ``base_model``: the frozen initial model behind ``base_logits``
    (the KL guard, ``loss_cfg.lambda_kl > 0``) and the ``teacher_*`` outputs (StarFT's teacher);
    needed when ``loss_spec.uses_base_model(loss_cfg)``. ``scheduler`` steps once per
    batch. ``epoch`` (0-based) / ``epochs`` (the run's total), when given, are put into every
    batch the loss sees, for losses with a schedule (StarFT's decaying weight needs them).
    Raises :class:`NonFiniteLossError` with the batch's image ids on a NaN/inf loss.
    """
    schedule = {k: v for k, v in (("epoch", epoch), ("epochs", epochs)) if v is not None}
    model.train()
    if freeze_norm:
        set_norm_eval(model)
    device = _device(model)
    model_family = get_family(family)
    needs = loss_spec.outputs_for(loss_cfg)
    if needs - model_family.outputs:
        raise ValueError(
            f"the loss needs model outputs {sorted(needs - model_family.outputs)} that model family "
            f"{family!r} does not produce (it gives {sorted(model_family.outputs)})"
        )
    if base_model is None and loss_spec.uses_base_model(loss_cfg):
        raise ValueError(
            f"the loss reads outputs of the frozen initial model ({sorted(needs)}: base_logits with "
            "loss.lambda_kl > 0, teacher_* for StarFT); pass base_model="
        )
    sums: dict[str, float] = {}
    n_batches = 0
    for batch in loader:
        batch = {**_on_device(batch, loss_spec.batch_keys, device), **schedule}
        outputs = model_family.forward(model, batch, needs, base_model=base_model, relevance=relevance)
        terms = loss_spec(outputs, batch, loss_cfg)
        loss = terms["loss"]
        _check_finite(loss, terms, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach().float().mean())
        if "n_no_mask" not in terms and "has_mask" in batch:
            sums["n_no_mask"] = sums.get("n_no_mask", 0.0) + float((~batch["has_mask"]).sum())
        n_batches += 1
    if n_batches == 0:
        raise ValueError("the training loader yielded no batches; check the dataset and batch size")
    return {k: (v if k in _COUNTS else v / n_batches) for k, v in sums.items()}


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    with_relevance: bool = False,
    relevance: str | RelevanceFn = "rollout",
    family: str = "timm",
) -> dict[str, Any]:
    """The family's evaluation (``ModelFamily.evaluate``): ``{"acc", "wga", "worst_group",
    "per_group", "n"}`` plus, with relevance, ``align_mass_in``, ``align_iou``,
    ``align_pointing`` (over images with a non-empty mask) and ``align_n``."""
    return get_family(family).evaluate(model, loader, relevance=relevance if with_relevance else None)


SELECT_ORDER = {"best_wga": ("wga", "acc"), "best_acc": ("acc", "wga")}
"""The metrics ``run.select`` ranks by, first to last (the second breaks ties, e.g. a worst group
still at 0 early on); sweeps rank trials the same way."""


def selection_score(select: str, evaluation: dict[str, Any]) -> tuple[float, float]:
    """What ``run.select`` maximises over :func:`evaluate` results: (wga, acc) for best_wga,
    (acc, wga) for best_acc (:data:`SELECT_ORDER`)."""
    return tuple(float(evaluation[k]) for k in SELECT_ORDER.get(select, SELECT_ORDER["best_acc"]))


def improves(
    select: str,
    candidate: dict[str, Any],
    kept: dict[str, Any] | None,
    start: dict[str, Any] | None = None,
    min_gain: float = 0.0,
    max_drop: float | None = None,
) -> bool:
    """Whether the weights evaluated as ``candidate`` replace those kept so far (``kept``) under
    ``run.select`` (evaluations as :func:`evaluate` returns them, on the validation split).

    The candidate must score strictly better than ``kept`` (:func:`selection_score`) and, against the
    starting model's evaluation ``start``: its selected metric must be at least ``min_gain`` above the
    start's, and its other accuracy (acc under best_wga, wga under best_acc) at most ``max_drop``
    below the start's (None: no bound). With ``min_gain`` 0 and no ``max_drop`` this is plain "best
    score wins". The margins are what make "never worse than the start" hold beyond the validation
    split's noise: a gain of one image in a small worst group is not evidence of a better model.
    """
    if select == "last":
        return False
    if kept is not None and selection_score(select, candidate) <= selection_score(select, kept):
        return False
    if start is None:
        return True
    first, other = SELECT_ORDER[select]
    tol = 1e-9  # accuracies are ratios of counts: 0.70 + 0.05 must admit 0.75
    if float(candidate[first]) < float(start[first]) + min_gain - tol:
        return False
    return max_drop is None or float(candidate[other]) >= float(start[other]) - max_drop - tol


def selection_note(
    select: str,
    epoch: int,
    epochs: int,
    chosen: dict[str, Any] | None,
    start: dict[str, Any] | None,
    split: str,
    min_gain: float = 0.0,
    max_drop: float | None = None,
) -> str:
    """One plain sentence on the weights ``run.select`` kept, for summaries, reports and MLflow.

    ``epoch``: the kept epoch (0-based; -1 = the starting model, evaluated before the first epoch);
    ``chosen`` / ``start``: the evaluations of the kept and the starting weights on ``split``;
    ``min_gain`` / ``max_drop``: the margins of :func:`improves`, named when they are set.
    """
    if select == "last":
        return f"weights of the last epoch ({epochs} of {epochs}); run.select is last"
    metric = select.removeprefix("best_")
    if epoch < 0:
        value = f" {float(start[metric]):.3f}" if start else ""
        by = f" by {min_gain:g} or more" if min_gain > 0 else ""
        other = SELECT_ORDER[select][1]
        guard = f" without losing more than {max_drop:g} {other}" if max_drop is not None else ""
        return f"no epoch improved on the starting model's {split} {metric}{value}{by}{guard}; kept it"
    value = f" {float(chosen[metric]):.3f}" if chosen else ""
    before = f" (starting model {float(start[metric]):.3f})" if start else ""
    return f"epoch {epoch + 1} of {epochs} had the best {split} {metric}{value}{before}; kept it"


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    loss_spec: Any,
    loss_cfg: Any,
    cfg: TrainConfig,
    base_model: nn.Module | None = None,
    relevance: str | RelevanceFn = "rollout",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    family: str = "timm",
) -> list[dict[str, float]]:
    """Train ``cfg.epochs`` epochs in-process (AdamW + schedule); returns each epoch's loss terms.

    ``on_epoch(epoch, terms)`` runs after every epoch (evaluation, logging, checkpoints).
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if base_model is not None:
        base_model.eval()
        for p in base_model.parameters():
            p.requires_grad_(False)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))  # type: ignore[arg-type]
    history = []
    for epoch in range(cfg.epochs):
        terms = train_one_epoch(
            model,
            train_loader,
            loss_spec,
            loss_cfg,
            optimizer,
            scheduler,
            base_model=base_model,
            relevance=relevance,
            grad_clip=cfg.grad_clip,
            freeze_norm=cfg.freeze_norm,
            family=family,
            epoch=epoch,
            epochs=cfg.epochs,
        )
        history.append(terms)
        if on_epoch is not None:
            on_epoch(epoch, terms)
    return history
