"""``grounded_sam`` segmenter: GroundingDINO boxes -> SAM masks, one SAM encode per image.

Per image: ``set_image`` runs SAM's image encoder once (``SamPredictor.set_image``) and keeps the
image. ``predict(concepts)`` runs the detector on the concept prompts (``merged``: one pass over
"c1. c2. ..."; ``per_concept``: one prompt "<concept>." per concept, batched), assigns query boxes
to concepts through their token spans, applies NMS per concept, then decodes every distinct kept box
of all concepts through ``SamPredictor.predict_torch`` from the cached embedding (batches of
``sam_batch_size``; a query box several concepts share is decoded once). A concept's mask is the
union of its boxes' masks (METHODS.md 1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unspur.actors.segmenter_api import ConceptMask, GroundedSamConfig
from unspur.actors.segmenter_models import Detector, load_detector, load_sam

__all__ = ["Detections", "GroundedSam", "Prompt", "box_iou", "build_prompts", "nms"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of XYXY boxes: (N, 4), (M, 4) -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in pure torch (torchvision's op is missing on CPU-only torch).

    boxes (N, 4) XYXY, scores (N,) -> indices (K,) of kept boxes, best score first.
    """
    order = torch.argsort(scores, descending=True)
    if order.numel() == 0:
        return order
    ious = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


@dataclass
class Prompt:
    """One detector text: ``text`` and, per concept index, its token positions in the encoding."""

    text: str
    spans: dict[int, list[int]]


def _prompt_text(concept: str) -> str:
    return " ".join(concept.lower().replace(".", " ").split())


def _encode_prompt(tokenizer, items: list[tuple[int, str]]) -> tuple[Prompt, int]:
    """Join concepts as "a. b." and map each concept to its token positions (via offsets)."""
    text, bounds = "", []
    for idx, concept in items:
        start = len(text)
        text += _prompt_text(concept)
        bounds.append((idx, start, len(text)))
        text += ". "
    text = text.strip()
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    spans: dict[int, list[int]] = {idx: [] for idx, _, _ in bounds}
    for pos, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        for idx, start, end in bounds:
            if s >= start and e <= end:
                spans[idx].append(pos)
    return Prompt(text, spans), len(enc["input_ids"])


def build_prompts(tokenizer, concepts: Sequence[str], mode: str, max_tokens: int) -> list[Prompt]:
    """Detector prompts for ``concepts``: ``per_concept`` -> one each; ``merged`` -> as few as fit
    in ``max_tokens`` tokens (the detector's text length), in order."""
    if mode == "per_concept":
        return [_encode_prompt(tokenizer, [(i, c)])[0] for i, c in enumerate(concepts)]
    texts = [_prompt_text(c) for c in concepts]
    sizes = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    groups: list[list[tuple[int, str]]] = []
    group: list[tuple[int, str]] = []
    used = 2  # [CLS] ... [SEP]
    for i, concept in enumerate(concepts):
        if group and used + sizes[i] + 1 > max_tokens:  # +1: the "." after each concept
            groups.append(group)
            group, used = [], 2
        group.append((i, concept))
        used += sizes[i] + 1
    if group:
        groups.append(group)
    prompts = []
    while groups:
        group = groups.pop(0)
        prompt, length = _encode_prompt(tokenizer, group)
        if length > max_tokens and len(group) > 1:  # a tokenizer that merges across "." boundaries
            half = len(group) // 2
            groups[:0] = [group[:half], group[half:]]
            continue
        prompts.append(prompt)
    return prompts


@dataclass
class Detections:
    """The boxes of one concept: ``boxes`` (K, 4) XYXY image pixels, ``scores`` (K,), and ``keys``
    (K,) naming each box's detector query (prompt * Q + query), so a box several concepts share is
    decoded once."""

    boxes: torch.Tensor
    scores: torch.Tensor
    keys: torch.Tensor

    @classmethod
    def none(cls) -> Detections:
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))


class GroundedSam:
    """Text-grounded detection + SAM; ``predict`` answers every concept from one SAM encoding."""

    name = "grounded_sam"

    def __init__(self, detector: Detector, sam, cfg: GroundedSamConfig, device: str = "cpu") -> None:
        from segment_anything import SamPredictor

        self.detector = detector
        self.predictor = SamPredictor(sam)
        self.cfg = cfg
        self.device = device
        self._image: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: GroundedSamConfig, device: str = "cpu") -> GroundedSam:
        detector = load_detector(cfg.detector, device, cfg.seed)
        sam = load_sam(cfg.sam_model, cfg.sam_checkpoint, device, cfg.seed)
        return cls(detector, sam, cfg, device)

    def set_image(self, image: np.ndarray, image_id: str = "") -> None:
        """Encode ``image`` ((H, W, 3) uint8 RGB) with SAM's image encoder, once."""
        self._image = image
        self.predictor.set_image(image)

    @torch.no_grad()
    def detect(self, concepts: Sequence[str]) -> list[Detections]:
        """Per concept: its boxes after the thresholds, NMS and the per-concept cap (best first)."""
        image = self._require_image()
        if not concepts:
            return []
        h, w = image.shape[:2]
        det, cfg = self.detector, self.cfg
        prompts = build_prompts(det.tokenizer, concepts, cfg.prompt_mode, det.max_text_len)
        pix = det.image_processor(images=[image], return_tensors="pt")
        text = det.tokenizer([p.text for p in prompts], padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in text.items()}
        inputs["pixel_values"] = pix["pixel_values"].to(self.device).expand(len(prompts), -1, -1, -1)
        if "pixel_mask" in pix:
            inputs["pixel_mask"] = pix["pixel_mask"].to(self.device).expand(len(prompts), -1, -1)
        out = det.model(**inputs)
        probs = out.logits.sigmoid().float().cpu()  # (P, Q, T) token probabilities per query
        cx, cy, bw, bh = out.pred_boxes.float().cpu().unbind(-1)  # normalised cxcywh (P, Q)
        boxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
        n_queries, n_tokens = probs.shape[1], probs.shape[2]
        found = [Detections.none() for _ in concepts]
        for p, prompt in enumerate(prompts):
            spans = {i: [t for t in span if t < n_tokens] for i, span in prompt.spans.items()}
            tokens = sorted({t for span in spans.values() for t in span})
            if not tokens:
                continue
            detected = probs[p][:, tokens].max(dim=-1).values > cfg.box_threshold  # (Q,)
            for idx, span in spans.items():
                if not span:
                    continue
                score = probs[p][:, span].max(dim=-1).values
                keep = torch.nonzero(detected & (score > cfg.text_threshold)).flatten()
                order = keep[nms(boxes[p][keep], score[keep], cfg.nms_iou)[: cfg.max_boxes_per_concept]]
                found[idx] = Detections(boxes[p][order], score[order], p * n_queries + order)
        return found

    @torch.no_grad()
    def predict(self, concepts: Sequence[str]) -> list[ConceptMask]:
        """Detect every concept, decode each distinct box once (batched, cached embedding), union per concept."""
        image = self._require_image()
        h, w = image.shape[:2]
        detections = self.detect(concepts)
        unique: dict[int, int] = {}  # detector query key -> row of the boxes to decode
        boxes_list: list[torch.Tensor] = []
        pairs: list[tuple[int, int]] = []  # (concept index, decoded row)
        for i, d in enumerate(detections):
            for key, box in zip(d.keys.tolist(), d.boxes, strict=True):
                if key not in unique:
                    unique[key] = len(boxes_list)
                    boxes_list.append(box)
                pairs.append((i, unique[key]))
        hits = torch.zeros(len(concepts), h, w, device=self.device)  # per concept: boxes covering each pixel
        concept_of = torch.tensor([c for c, _ in pairs], dtype=torch.long)
        row_of = torch.tensor([r for _, r in pairs], dtype=torch.long)
        step = self.cfg.sam_batch_size
        for start in range(0, len(boxes_list), step):
            chunk = torch.stack(boxes_list[start : start + step])
            prompts = self.predictor.transform.apply_boxes_torch(chunk, (h, w)).to(self.device)
            masks, _, _ = self.predictor.predict_torch(None, None, boxes=prompts, multimask_output=False)
            sel = (row_of >= start) & (row_of < start + len(chunk))
            rows = (row_of[sel] - start).to(self.device)
            hits.index_add_(0, concept_of[sel].to(self.device), masks[:, 0].float()[rows])
        out = []
        for i, concept in enumerate(concepts):
            d = detections[i]
            if len(d.boxes) == 0:
                out.append(ConceptMask(concept, None, None, "empty", "no box above the detector thresholds"))
                continue
            mask = (hits[i] > 0).cpu().numpy()
            out.append(ConceptMask.found(concept, mask, float(d.scores.max()), "SAM returned empty masks"))
        return out

    def _require_image(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict(concepts)")
        return self._image
