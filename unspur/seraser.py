"""SEraser: test-time prompt tuning that erases spurious features (METHODS.md 4).

Per test image: foreground / background views from the union of its masks (:func:`make_views`),
a fresh learnable prompt context (:class:`unspur.models.prompt.PromptContext`), ``steps`` AdamW
steps on :func:`unspur.losses.seraser.seraser_objective`, then the raw image is classified with
the tuned prompt. All CLIP weights are frozen.

Encode once: the image features of every view do not change while the prompt is tuned, so
:meth:`PromptTuner.run` encodes the views and the raw image once, in one image-encoder call for
all images of the batch, and each step runs only the text side (``P`` episodes x ``C`` class
prompts in one forward). ``cached=False`` re-encodes every view at every step (the naive loop,
kept for the benchmark and the test that both agree).

Images are (3, S, S) float in [0, 1] at the model's input size; masks (S, S) bool; the model's
input mean/std (``model.pretrained_cfg``) is applied after the fill.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unspur.config.adapt import AdaptCheckConfig, SEraserConfig
from unspur.losses.seraser import seraser_objective
from unspur.models.families.clip import Tokenizer, zero_shot_head
from unspur.models.prompt import PromptContext

__all__ = [
    "FILLS",
    "PromptTuner",
    "TuneResult",
    "ViewFeatures",
    "check_verdict",
    "fill_image",
    "make_views",
    "view_seed",
]


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) -> separable Gaussian blur (``sigma`` pixels, reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, image.shape[-1] - 1, image.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1).contiguous(), groups=3)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1).contiguous(), groups=3)
    return out[0]


#: fill name -> (image (3, H, W) in [0, 1], blur sigma as a fraction of the side) -> fill (3, H, W)
FILLS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "black": lambda image, _: torch.zeros_like(image),
    "grey": lambda image, _: torch.full_like(image, 0.5),
    "mean": lambda image, _: image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone(),
    "blur": lambda image, sigma: _blur(image, sigma * image.shape[-1]),
}


def fill_image(image: torch.Tensor, fill: str, blur_sigma: float = 0.05) -> torch.Tensor:
    """What replaces the removed region of ``image`` (3, H, W) in [0, 1] (:data:`FILLS`)."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {sorted(FILLS)}")
    return FILLS[fill](image, blur_sigma)


def view_seed(seed: int, image_id: str) -> int:
    """The augmentation seed of one image: the same whatever batch or order it comes in."""
    return zlib.crc32(f"{seed}:{image_id}".encode()) & 0x7FFFFFFF


def _crop_flip(
    image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, min_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random square crop of area ``min_scale``..1, resized back, flipped with probability 0.5."""
    size = image.shape[-1]
    scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=gen))
    side = max(2, round(size * math.sqrt(scale)))
    top = int(torch.randint(0, size - side + 1, (), generator=gen))
    left = int(torch.randint(0, size - side + 1, (), generator=gen))
    crop = image[:, top : top + side, left : left + side][None]
    crop_mask = mask[top : top + side, left : left + side][None, None].float()
    image = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(crop_mask, size=(size, size), mode="nearest")[0, 0] > 0.5
    if float(torch.rand((), generator=gen)) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    return image, mask


def make_views(
    image: torch.Tensor, mask: torch.Tensor, cfg: SEraserConfig, image_id: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, S, S) image in [0, 1] and (S, S) bool mask -> (foreground (1 + A, 3, S, S), background
    (2 + A, 3, S, S)) in [0, 1], ``A`` = ``cfg.augment_views``. The first view of each is the
    whole image; the background batch ends with the all-fill image (all black as published). The
    foreground views' removed background is filled with ``cfg.fg_fill``, the background views'
    removed object with ``cfg.bg_fill`` (each None: ``cfg.fill``)."""
    pairs = [(image, mask.bool())]
    gen = torch.Generator().manual_seed(view_seed(cfg.seed, image_id))
    pairs += [_crop_flip(image, mask.bool(), gen, cfg.min_scale) for _ in range(cfg.augment_views)]
    fg_fill, bg_fill = cfg.fg_fill or cfg.fill, cfg.bg_fill or cfg.fill
    fg, bg = [], []
    for x, m in pairs:
        m = m.to(x.dtype)[None]
        fg.append(x * m + fill_image(x, fg_fill, cfg.blur_sigma) * (1 - m))
        bg.append(x * (1 - m) + fill_image(x, bg_fill, cfg.blur_sigma) * m)
    bg.append(fill_image(image, bg_fill, cfg.blur_sigma))
    return torch.stack(fg), torch.stack(bg)


@dataclass
class ViewFeatures:
    """L2-normalised image features of ``P`` images: ``fg`` (P, Vf, D), ``bg`` (P, Vb, D), ``raw`` (P, D)."""

    fg: torch.Tensor
    bg: torch.Tensor
    raw: torch.Tensor


@dataclass
class TuneResult:
    """Per image (P of them): ``zero_shot`` (P, C) logits of the model's zero-shot head, ``tuned``
    (P, C) logits of the raw image under the tuned prompt, ``loss_start`` / ``loss_end`` (P,) the
    objective at the first and the last step (NaN without steps)."""

    zero_shot: torch.Tensor
    tuned: torch.Tensor
    loss_start: torch.Tensor
    loss_end: torch.Tensor


class PromptTuner:
    """SEraser on a frozen open_clip ``model`` over ``classes`` (see the module docstring).

    ``templates``: the zero-shot head's templates (the baseline prediction); default the model's
    own (``model.zero_shot``) or ``"a photo of a {}."``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        classes: Sequence[str],
        cfg: SEraserConfig,
        templates: Sequence[str] | None = None,
    ) -> None:
        self.model = model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.cfg = cfg
        self.device = next(model.parameters()).device
        norm = getattr(model, "pretrained_cfg", None) or {}
        self.mean = torch.tensor(norm.get("mean", (0.0, 0.0, 0.0)), device=self.device).view(3, 1, 1)
        self.std = torch.tensor(norm.get("std", (1.0, 1.0, 1.0)), device=self.device).view(3, 1, 1)
        spec = getattr(model, "zero_shot", None)
        templates = templates or (spec.templates if spec is not None else ("a photo of a {}.",))
        generator = torch.Generator().manual_seed(cfg.seed)
        self.prompt = PromptContext(
            model, tokenizer, classes, context_init=cfg.context_init, n_ctx=cfg.n_ctx, generator=generator
        )
        with torch.no_grad():
            self.scale = model.logit_scale.exp()
            self.head = zero_shot_head(model, tokenizer, classes, templates)  # (C, D)
            self.start_text = self.prompt.features()[0]  # (C, D): the untuned prompt

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device) - self.mean) / self.std

    @torch.no_grad()
    def encode(self, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, D) L2-normalised image features."""
        parts = [
            self.model.encode_image(self._normalise(images[i : i + chunk]), normalize=True)
            for i in range(0, len(images), chunk)
        ]
        return torch.cat(parts)

    def views(
        self, images: torch.Tensor, masks: torch.Tensor, image_ids: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, 3, S, S) images and (P, S, S) masks -> fg (P, Vf, 3, S, S), bg (P, Vb, ...), raw (P, 3, S, S)."""
        pairs = [make_views(x, m, self.cfg, i) for x, m, i in zip(images, masks, image_ids, strict=True)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), images

    def encode_views(self, fg: torch.Tensor, bg: torch.Tensor, raw: torch.Tensor) -> ViewFeatures:
        """Every view and raw image of the batch in one encoder pass (chunked) -> :class:`ViewFeatures`."""
        p, vf, vb = fg.shape[0], fg.shape[1], bg.shape[1]
        feats = self.encode(torch.cat([fg.flatten(0, 1), bg.flatten(0, 1), raw]))
        return ViewFeatures(
            fg=feats[: p * vf].view(p, vf, -1),
            bg=feats[p * vf : p * (vf + vb)].view(p, vb, -1),
            raw=feats[p * (vf + vb) :],
        )

    def _step_terms(self, feats: ViewFeatures, text: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        fg_logits = self.scale * torch.einsum("pvd,pcd->pvc", feats.fg, text)
        bg_logits = self.scale * torch.einsum("pvd,pcd->pvc", feats.bg, text)
        reference = None
        if cfg.fg_term == "kl_reference":
            reference = self.scale * torch.einsum("pvd,cd->pvc", feats.fg, self.start_text)
        raw_logits = None
        if cfg.lambda_label > 0:
            raw_logits = self.scale * torch.einsum("pd,pcd->pc", feats.raw, text)
        return seraser_objective(
            fg_logits,
            bg_logits,
            fg_term=cfg.fg_term,
            fg_reference_logits=reference,
            lambda_bg=cfg.lambda_bg,
            lambda_fg=cfg.lambda_fg,
            raw_logits=raw_logits,
            lambda_label=cfg.lambda_label,
        )

    def tune(self, features: Callable[[], ViewFeatures]) -> TuneResult:
        """One episode per image: a fresh context each, ``steps`` AdamW steps (an episode whose
        objective is at most ``stop_below`` stops there and keeps that context), then the raw
        images' logits. ``features()`` gives the view features at each step (cached: the same
        object). ``loss_end`` is the objective of the context each episode ends with, before its
        last update when it ran every step."""
        feats = features()
        n = feats.raw.shape[0]
        ctx = self.prompt.reset(n)
        optimizer = torch.optim.AdamW([ctx], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        start = end = torch.full((n,), float("nan"))
        stopped = torch.zeros(n, dtype=torch.bool)
        kept = ctx.detach().clone()
        for step in range(self.cfg.steps):
            if step:
                feats = features()
            terms = self._step_terms(feats, self.prompt.features())
            episode = terms["episode"].cpu()
            start = episode if step == 0 else start
            end = episode
            if self.cfg.stop_below is not None:
                newly = (episode <= self.cfg.stop_below) & ~stopped
                kept[newly] = ctx.detach()[newly.to(ctx.device)]
                stopped |= newly
                if bool(stopped.all()):
                    break
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            if bool(stopped.any()):
                with torch.no_grad():  # a stopped episode keeps its context as it was when it stopped
                    ctx[stopped.to(ctx.device)] = kept[stopped.to(ctx.device)]
        with torch.no_grad():
            if self.cfg.steps:
                feats = features()
            tuned = self.scale * torch.einsum("pd,pcd->pc", feats.raw, self.prompt.features())
            zero_shot = self.scale * feats.raw @ self.head.T
        return TuneResult(zero_shot.cpu(), tuned.cpu(), start, end)

    def run(
        self, images: torch.Tensor, masks: torch.Tensor, image_ids: Sequence[str], cached: bool = True
    ) -> TuneResult:
        """SEraser on a batch of images ((P, 3, S, S) in [0, 1], (P, S, S) masks): views encoded once
        (``cached``) or at every step (the naive loop)."""
        fg, bg, raw = self.views(images, masks, image_ids)
        if cached:
            feats = self.encode_views(fg, bg, raw)
            return self.tune(lambda: feats)
        return self.tune(lambda: self.encode_views(fg, bg, raw))

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, C) zero-shot logits (no tuning)."""
        return (self.scale * self.encode(images) @ self.head.T).cpu()


def check_verdict(
    before: Mapping[str, Any], after: Mapping[str, Any], check: AdaptCheckConfig
) -> tuple[bool, str]:
    """Whether SEraser earns trust from its check split (:class:`unspur.config.AdaptCheckConfig`):
    ``before`` / ``after`` are the zero-shot head's and the tuned prompts' ``acc`` and ``wga`` there
    (:func:`unspur.metrics.summarize`). -> (trusted, a sentence that says why, with the numbers)."""
    from unspur.training import improves

    trusted = improves(
        "best_wga", after, None, start=before, min_gain=check.min_gain, max_drop=check.max_drop
    )
    numbers = (
        f"on {check.split} SEraser moved wga {before['wga']:.3f} -> {after['wga']:.3f} and acc "
        f"{before['acc']:.3f} -> {after['acc']:.3f}"
    )
    bound = "wga not lower" if check.min_gain == 0 else f"wga up by at least {check.min_gain:g}"
    if check.max_drop is not None:
        bound += f" and acc down by at most {check.max_drop:g}"
    if trusted:
        return True, f"{numbers}: {bound}; tuned predictions kept"
    return False, f"{numbers}: needs {bound}; kept the zero-shot head (no image tuned)"
