"""``clipseg`` segmenter: text-prompted CLIPSeg, lighter than grounding + SAM.

``set_image`` runs CLIPSeg's CLIP vision encoder once and keeps the activations its decoder
reads; ``predict(concepts)`` embeds all concept texts in one batch and decodes every concept
from those cached activations (the model's own forward would re-encode the image per prompt).
Probabilities are resized (bilinear) to the image size and thresholded at ``threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unspur.actors.segmenter_api import ClipSegConfig, ConceptMask
from unspur.actors.segmenter_models import TextSegmenter, load_clipseg

__all__ = ["ClipSeg"]


class ClipSeg:
    """CLIPSeg predictor: one vision encode per image, one decoder pass for all concepts."""

    name = "clipseg"

    def __init__(self, seg: TextSegmenter, cfg: ClipSegConfig, device: str = "cpu") -> None:
        self.seg = seg
        self.cfg = cfg
        self.device = device
        self._activations: list[torch.Tensor] | None = None
        self._size: tuple[int, int] = (0, 0)

    @classmethod
    def from_config(cls, cfg: ClipSegConfig, device: str = "cpu") -> ClipSeg:
        return cls(load_clipseg(cfg.model, device, cfg.seed), cfg, device)

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_id: str = "") -> None:
        """Encode ``image`` ((H, W, 3) uint8 RGB) once; keep the decoder's input activations."""
        model = self.seg.model
        pixels = self.seg.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(self.device)
        vision = model.clip.get_image_features(
            pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True
        )
        self._activations = [vision.hidden_states[i + 1] for i in model.extract_layers]
        self._size = (int(image.shape[0]), int(image.shape[1]))

    @torch.no_grad()
    def predict(self, concepts: Sequence[str]) -> list[ConceptMask]:
        """Probability maps for all concepts in one decoder pass -> thresholded masks."""
        if self._activations is None:
            raise RuntimeError("call set_image(image) before predict(concepts)")
        model, n = self.seg.model, len(concepts)
        text = self.seg.tokenizer(list(concepts), padding=True, return_tensors="pt")
        cond = model.get_conditional_embeddings(
            batch_size=n,
            input_ids=text["input_ids"].to(self.device),
            attention_mask=text["attention_mask"].to(self.device),
        )
        acts = [a.expand(n, -1, -1) for a in self._activations]
        logits = model.decoder(acts, cond).logits  # (N, h, w)
        logits = logits.reshape(n, 1, logits.shape[-2], logits.shape[-1]).float()
        probs = (
            F.interpolate(logits, size=self._size, mode="bilinear", align_corners=False).sigmoid()[:, 0].cpu()
        )
        out = []
        for concept, prob in zip(concepts, probs, strict=True):
            mask = (prob > self.cfg.threshold).numpy()
            out.append(
                ConceptMask.found(
                    concept, mask, float(prob.max()), f"no pixel above clipseg.threshold={self.cfg.threshold}"
                )
            )
        return out
