"""The ``clip`` family: open_clip image-text models, classifying zero-shot.

Outputs of :meth:`ClipFamily.forward` (B = batch size, D = the embedding width):

- ``image_features`` (B, D): L2-normalised image embeddings of ``batch["image"]``;
- ``text_features`` (B, D): L2-normalised text embeddings of ``batch["tokens"]`` (B, L) int64,
  the tokenized captions (:meth:`ClipFamily.tokenizer`);
- ``logit_scale`` (): the exp'd learned temperature (``model.logit_scale.exp()``);
- ``logits`` (B, C): zero-shot class logits ``logit_scale * image_features @ head.T`` with
  ``head`` = :func:`zero_shot_head` over the config's ``classes`` and ``templates``;
- ``spurious_text_features`` (B, D): L2-normalised text embeddings of ``batch["spurious_tokens"]``
  (B, L), StarFT's spurious captions;
- ``region_features`` (B, R, D): L2-normalised image embeddings of ``batch["regions"]``
  (B, R, 3, S, S), each image's region crops (RaVL), encoded in the same image forward;
- ``erased_features`` (B, D): L2-normalised image embeddings of ``batch["erased"]`` (B, 3, S, S),
  each image with its spurious regions zeroed (RaVL), in the same image forward;
- ``pasted_features`` (B, D): L2-normalised image embeddings of ``batch["pasted"]`` (B, 3, S, S),
  the counterfactual views with a donor's spurious region pasted in (RaVL), for the rows with
  ``batch["pasted_tied"] >= 0`` only (the others hold the row's ``image_features``), in the same
  image forward;
- ``class_text_features`` (C, D): the zero-shot head (as for ``logits``) with gradient;
- ``teacher_image_features``, ``teacher_spurious_text_features`` (B, D) and
  ``teacher_logit_scale`` (): the same from the frozen initial model (``base_model``), no grad.

The trained model runs in one call per batch (through a DDP wrapper if any): caption tokens,
spurious tokens and class prompts are concatenated into one text batch, each distinct caption
once (a batch of 256 class captions holds a handful of distinct ones; the features are gathered
back per row, so gradients are those of the full batch). The teacher is frozen,
so its spurious-caption features depend on the caption only: they are computed once per
distinct caption and cached on the teacher module (``teacher._unspur_text_cache``: token tuple
-> (D,) feature; a run's captions are a finite set, classes x templates); so are its image
features, keyed by ``batch["view_id"]`` (the dataset's id of the exact pixels: image id plus
augmentation; batches without view ids are encoded every step), so from the second epoch on a
StarFT step runs no teacher forward at all. The image cache holds one (D,) float per view seen
(8,000 images x 2 flips x 512 dims = 33 MB at ViT-B size). Text forwards stop after the batch's
last EOT token (:class:`TrimmedTextCLIP`: the tower's mask is causal, so the padding after it
changes nothing). Architectures are open_clip's plus the tiny ones in ``clip_configs/`` (JSON,
registered with ``open_clip.add_model_config``).
Evaluation: zero-shot accuracy, per-group and worst-group accuracy (no relevance alignment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from unspur.config.model import ClipModelConfig
from unspur.metrics import summarize
from unspur.models.attention import unwrap
from unspur.models.checkpoint import load_weights
from unspur.models.families.protocol import Batch, Outputs, RelevanceFn, collect_predictions
from unspur.models.prompt import encode_text_embeddings, eot_positions, pools_at_eot

__all__ = [
    "CLIP_CONFIGS",
    "TEACHER_OUTPUTS",
    "ClipFamily",
    "Tokenizer",
    "TrimmedTextCLIP",
    "ZeroShot",
    "cached_text_features",
    "teacher_outputs",
    "zero_shot_head",
]

#: folder of unspur's open_clip architecture configs (``<name>.json``)
CLIP_CONFIGS = Path(__file__).with_name("clip_configs")
open_clip.add_model_config(CLIP_CONFIGS)

#: captions -> (N, context_length) int64 token ids
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class ZeroShot:
    """What a built CLIP model classifies with (attached as ``model.zero_shot``)."""

    classes: tuple[str, ...]
    templates: tuple[str, ...]
    tokenizer: Tokenizer

    def prompt_tokens(self) -> torch.Tensor:
        """(C * T, L) tokens of every template filled with every class, class-major."""
        if not self.classes:
            raise ValueError(
                "the clip model has no zero-shot classes: set model.classes to the class names "
                "(in label order) to get logits or predictions"
            )
        return self.tokenizer([t.format(c) for c in self.classes for t in self.templates])


def _class_means(text_features: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C * T, D) per-prompt embeddings, class-major -> (C, D) renormalised class means."""
    per_prompt = F.normalize(text_features, dim=-1).view(n_classes, -1, text_features.shape[-1])
    return F.normalize(per_prompt.mean(1), dim=-1)


def zero_shot_head(
    model: nn.Module, tokenizer: Tokenizer, classes: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Zero-shot class embeddings (C, D): per class, the mean of the L2-normalised text embeddings
    of its captions ``template.format(class_name)``, renormalised. Runs in the caller's grad mode."""
    spec = ZeroShot(tuple(classes), tuple(templates), tokenizer)
    tokens = spec.prompt_tokens().to(_device(model))
    return _class_means(unwrap(model).encode_text(tokens), len(classes))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


#: outputs of the frozen initial model (``base_model``)
TEACHER_OUTPUTS = ("teacher_image_features", "teacher_spurious_text_features", "teacher_logit_scale")


def _tokens(batch: Batch, key: str, output: str) -> torch.Tensor:
    if key not in batch:
        raise ValueError(f"{output} needs batch[{key!r}]: build the dataset with the loss's batch_keys")
    return batch[key]


def _encode_once(
    teacher: nn.Module, cache_name: str, keys: list[Any], rows: torch.Tensor, encode: Callable
) -> torch.Tensor:
    """(B, D) ``encode`` outputs for ``rows`` (B, ...), each distinct key encoded once per teacher
    and kept on it (``teacher.<cache_name>``: only valid because the teacher never changes)."""
    cache: dict[Any, torch.Tensor] = teacher.__dict__.setdefault(cache_name, {})
    new = list(dict.fromkeys(k for k in keys if k not in cache))
    if new:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        features = encode(rows[[first[k] for k in new]])
        cache.update(zip(new, features, strict=True))
    return torch.stack([cache[k] for k in keys]).to(rows.device)


@torch.no_grad()
def cached_text_features(teacher: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens -> (B, D) L2-normalised text features of the frozen ``teacher``, each
    distinct caption (token tuple) encoded once per teacher (``teacher._unspur_text_cache``)."""
    bare = unwrap(teacher)
    keys = [tuple(row) for row in tokens.tolist()]
    return _encode_once(
        bare, "_unspur_text_cache", keys, tokens, lambda t: bare.encode_text(t, normalize=True)
    )


@torch.no_grad()
def cached_image_features(teacher: nn.Module, batch: Batch) -> torch.Tensor:
    """(B, D) L2-normalised image features of the frozen ``teacher`` for ``batch["image"]``, each
    view (``batch["view_id"]``) encoded once per teacher (``teacher._unspur_image_cache``);
    without view ids every image is encoded."""
    images = batch["image"]
    views = batch.get("view_id")
    if views is None:
        return teacher.encode_image(images, normalize=True)
    return _encode_once(
        teacher, "_unspur_image_cache", list(views), images, lambda x: teacher.encode_image(x, normalize=True)
    )


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, batch: Batch, needs: frozenset[str]) -> Outputs:
    """The ``teacher_*`` outputs in ``needs`` from the frozen initial model."""
    bare = unwrap(teacher)
    out: Outputs = {}
    if "teacher_image_features" in needs:
        out["teacher_image_features"] = cached_image_features(bare, batch)
    if "teacher_spurious_text_features" in needs:
        tokens = _tokens(batch, "spurious_tokens", "teacher_spurious_text_features")
        out["teacher_spurious_text_features"] = cached_text_features(bare, tokens)
    if "teacher_logit_scale" in needs:
        out["teacher_logit_scale"] = bare.logit_scale.exp()
    return out


class TrimmedTextCLIP(open_clip.model.CLIP):
    """open_clip's CLIP whose text forward stops after the batch's last EOT token.

    The text tower's mask is causal, so the pooled EOT features do not depend on the padding
    after it: a caption of ~12 tokens runs 12 positions, not the 77 of the context. Same
    parameters and state dict as :class:`open_clip.model.CLIP` (features equal up to float
    summation order); :meth:`ClipFamily.build` gives every CLIP with a causal mask this class.
    """

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        eot = eot_positions(self, text)
        length = int(eot.max()) + 1 if len(text) else text.shape[1]
        x = encode_text_embeddings(self, self.token_embedding(text[:, :length]), eot)
        return F.normalize(x, dim=-1) if normalize else x


def _trim_text(model: nn.Module) -> nn.Module:
    """``model`` as :class:`TrimmedTextCLIP` when its text tower allows it (open_clip's own CLIP
    text tower, causal mask, pooled at the EOT token); other models unchanged."""
    causal = getattr(model, "attn_mask", None) is not None
    if type(model) is open_clip.model.CLIP and causal and pools_at_eot(model):
        model.__class__ = TrimmedTextCLIP
    return model


class ClipFamily:
    """open_clip models; see the module docstring for the outputs."""

    name = "clip"
    outputs = frozenset(
        {
            "image_features",
            "text_features",
            "logit_scale",
            "logits",
            "spurious_text_features",
            "region_features",
            "erased_features",
            "pasted_features",
            "class_text_features",
            *TEACHER_OUTPUTS,
        }
    )

    def tokenizer(self, cfg: ClipModelConfig) -> Tokenizer:
        """open_clip's tokenizer of ``cfg.name`` (context length from the architecture; the BPE
        vocabulary ships with open_clip, so it works offline)."""
        return open_clip.get_tokenizer(cfg.name)

    def build(self, cfg: ClipModelConfig) -> nn.Module:
        """``open_clip.create_model(cfg.name, pretrained=cfg.pretrained)`` at ``cfg.img_size``;
        ``cfg.checkpoint`` loaded if set. The model carries ``zero_shot`` (classes, templates,
        tokenizer) and ``pretrained_cfg`` (its input ``mean``/``std``, read by the datasets)."""
        if cfg.name not in open_clip.list_models():
            raise ValueError(
                f"unknown clip model {cfg.name!r}: not an open_clip architecture; see "
                "open_clip.list_models() (unspur's tiny ones: "
                f"{sorted(p.stem for p in CLIP_CONFIGS.glob('*.json'))})"
            )
        arch = open_clip.get_model_config(cfg.name) or {}
        arch_size = arch.get("vision_cfg", {}).get("image_size")
        force_size = None if arch_size == cfg.img_size else cfg.img_size
        model = open_clip.create_model(
            cfg.name, pretrained=cfg.pretrained, force_image_size=force_size, output_dict=True, **cfg.kwargs
        )
        model = _trim_text(model)
        model.zero_shot = ZeroShot(tuple(cfg.classes), tuple(cfg.templates), self.tokenizer(cfg))
        pre = getattr(model.visual, "preprocess_cfg", {}) or {}
        model.pretrained_cfg = {
            "mean": tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            "std": tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
        }
        if cfg.checkpoint:
            load_weights(model, cfg.checkpoint, cfg)
        return model

    def forward(
        self,
        model: nn.Module,
        batch: Batch,
        needs: frozenset[str],
        *,
        base_model: nn.Module | None = None,
        relevance: str | RelevanceFn = "rollout",
    ) -> Outputs:
        """``batch["image"]`` (B, 3, S, S) and, for ``text_features`` / ``spurious_text_features``,
        ``batch["tokens"]`` / ``batch["spurious_tokens"]`` (B, L) on the model's device -> the
        outputs in ``needs`` (one call of ``model``; ``teacher_*`` outputs from ``base_model``,
        the frozen initial model, see :func:`teacher_outputs`)."""
        text: list[torch.Tensor] = []
        spans: dict[str, slice] = {}
        for output, key in (("text_features", "tokens"), ("spurious_text_features", "spurious_tokens")):
            if output in needs:
                start = sum(len(t) for t in text)
                text.append(_tokens(batch, key, output))
                spans[output] = slice(start, start + len(text[-1]))
        n_captions = sum(len(t) for t in text)
        if needs & {"logits", "class_text_features"}:
            text.append(unwrap(model).zero_shot.prompt_tokens().to(batch["image"].device))
        image_outputs = {"image_features", "logits", "region_features", "erased_features", "pasted_features"}
        images = batch["image"] if needs & image_outputs else None
        n_images = 0 if images is None else len(images)
        extra: dict[str, torch.Tensor] = {}  # regions and erased images ride in the same image forward
        if "region_features" in needs:
            regions = _tokens(batch, "regions", "region_features")
            extra["region_features"] = regions.flatten(0, 1)
        if "erased_features" in needs:
            extra["erased_features"] = _tokens(batch, "erased", "erased_features")
        if "pasted_features" in needs:  # only the rows that have a counterfactual view
            pasted_rows = _tokens(batch, "pasted_tied", "pasted_features") >= 0
            extra["pasted_features"] = _tokens(batch, "pasted", "pasted_features")[pasted_rows]
        if extra:
            images = torch.cat([images, *extra.values()])
        distinct, inverse = None, None
        if text:  # each distinct caption encoded once (class captions and templates repeat in a batch)
            distinct, inverse = torch.unique(torch.cat(text), dim=0, return_inverse=True)
        res = model(images, distinct)
        if inverse is not None:
            res = {**res, "text_features": res["text_features"][inverse]}
        out: Outputs = {}
        if "image_features" in needs:
            out["image_features"] = res["image_features"][:n_images]
        start = n_images
        for output, pixels in extra.items():
            features = res["image_features"][start : start + len(pixels)]
            if output == "region_features":
                features = features.view(*regions.shape[:2], -1)
            elif output == "pasted_features":
                features = res["image_features"][:n_images].clone().index_put((pasted_rows,), features)
            out[output] = features
            start += len(pixels)
        for output, span in spans.items():
            out[output] = res["text_features"][span]
        if "logit_scale" in needs:
            out["logit_scale"] = res["logit_scale"]
        if needs & {"logits", "class_text_features"}:
            head = _class_means(res["text_features"][n_captions:], len(unwrap(model).zero_shot.classes))
            out["class_text_features"] = head
        if "logits" in needs:
            out["logits"] = res["logit_scale"] * res["image_features"][:n_images] @ head.T
        if "class_text_features" not in needs:
            out.pop("class_text_features", None)
        if needs & set(TEACHER_OUTPUTS):
            if base_model is None:
                raise ValueError(
                    f"outputs {sorted(needs & set(TEACHER_OUTPUTS))} come from the frozen initial model; "
                    "pass base_model="
                )
            out.update(teacher_outputs(base_model, batch, needs))
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, np.ndarray]:
        """Zero-shot arg-max predictions and softmax probabilities over ``loader`` (the class
        embeddings are computed once)."""
        model.eval()
        bare = unwrap(model)
        device = _device(model)
        spec: ZeroShot = bare.zero_shot
        head = zero_shot_head(bare, spec.tokenizer, spec.classes, spec.templates)
        scale = bare.logit_scale.exp()
        return collect_predictions(
            loader,
            lambda images: scale * bare.encode_image(images.to(device), normalize=True) @ head.T,
            len(spec.classes),
        )

    def evaluate(
        self, model: nn.Module, loader: Iterable[Batch], relevance: str | RelevanceFn | None = None
    ) -> dict[str, Any]:
        """Zero-shot ``summarize`` metrics (acc, wga, worst_group, per_group, n). ``relevance`` is
        accepted for the protocol; a CLIP model has no relevance output, so no ``align_*`` keys."""
        pred = self.predict(model, loader)
        return summarize(pred["pred"], pred["label"], pred["group"])
