"""RaVL's region embedder as a plain callable for Ray Data (``unspur regions``).

``RegionEmbedder(checkpoint, regions)`` loads a clip-family checkpoint once in ``__init__``
(the zero-shot class embeddings too); ``__call__`` maps a batch of image-table columns
(``image_id``, ``image`` bytes or ``path``, ``label``, optional ``split``, the truth column, and
``mask_rles`` JSON lists for mask regions) to region rows (:data:`OUTPUT_COLUMNS`): per image one
``kind: image`` row (the whole image, ``region_id`` -1) then one ``kind: region`` row per region
(:mod:`unspur.regions`: grid cells or the image's masks, cropped, outside the mask zeroed,
resized to the model's input; ``rle`` holds a mask region's mask as a JSON COCO RLE, "" for a
box). Every row holds the L2-normalised CLIP image embedding,
``scores`` = softmax(emb @ head.T / temperature) over the classes and ``pred`` (its arg-max).
An image that cannot be read, or has no region, is one ``error`` row with the reason; rows in
(images) == images with rows out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from unspur.regions import (
    Region,
    background_region,
    drop_blank,
    grid_regions,
    mask_regions,
    region_mask,
    region_tensor,
    truth_overlap,
)

__all__ = ["OUTPUT_COLUMNS", "RegionEmbedder", "image_regions"]

OUTPUT_COLUMNS = (
    "image_id",
    "split",
    "label",
    "region_id",
    "kind",
    "name",
    "box",
    "rle",
    "embedding",
    "scores",
    "pred",
    "truth",
    "status",
    "error",
)


def image_regions(image: np.ndarray, regions: Mapping[str, Any], mask_rles: str = "") -> list[Region]:
    """The candidate regions of an (H, W, 3) image under a
    :class:`unspur.config.regions.RegionSourceConfig` (as a dict); ``mask_rles``: the image's ok
    masks as a JSON list of COCO RLEs (mask regions, largest first, at most ``max_regions``, then
    with ``background`` what no mask covers); blank regions are dropped when ``blank_std`` is set."""
    from unspur.masks import decode, resize_mask

    h, w = image.shape[:2]
    blank_std = regions.get("blank_std")
    if regions["source"] == "grid":
        cells = grid_regions(h, w, int(regions["grid"]))
        return cells if blank_std is None else drop_blank(image, cells, float(blank_std))
    masks = []
    for rle in json.loads(mask_rles) if mask_rles else []:
        mask = decode(rle)
        masks.append(mask if mask.shape == (h, w) else resize_mask(mask, (h, w)))
    found = mask_regions(masks, int(regions["min_pixels"]))
    rest = background_region(masks, (h, w), int(regions["min_pixels"])) if regions.get("background") else None
    if blank_std is not None:
        found = drop_blank(image, found, float(blank_std))
    found.sort(key=lambda r: -int(r.mask.sum()))
    found = found[: int(regions["max_regions"])]
    if rest is not None and (blank_std is None or drop_blank(image, [rest], float(blank_std))):
        found.append(rest)
    return found


class RegionEmbedder:
    """Region rows for batches of image rows (see the module docstring). ``regions``: a
    :class:`unspur.config.regions.RegionSourceConfig` as a dict; ``device``: ``auto`` (CUDA when
    available), ``cpu``, ``cuda``; ``threads``: torch threads (0 = leave as is)."""

    def __init__(
        self,
        checkpoint: str,
        regions: Mapping[str, Any],
        temperature: float = 0.07,
        device: str = "auto",
        threads: int = 0,
    ) -> None:
        from unspur.models import checkpoint_model_config, load_checkpoint
        from unspur.models.families import input_norm
        from unspur.models.families.clip import zero_shot_head

        if threads:
            torch.set_num_threads(threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        cfg = checkpoint_model_config(checkpoint)
        if getattr(cfg, "family", "timm") != "clip" or not cfg.classes:
            raise ValueError(
                f"region embedding needs a clip-family checkpoint with classes; {checkpoint} is not"
            )
        model, _ = load_checkpoint(checkpoint)
        self.model = model.to(self.device).eval()
        spec = model.zero_shot
        with torch.no_grad():
            self.head = zero_shot_head(model, spec.tokenizer, spec.classes, spec.templates)
        self.norm = input_norm(model)
        self.size = int(cfg.img_size)
        self.regions = dict(regions)
        self.temperature = float(temperature)
        self.n_classes = len(spec.classes)

    @torch.no_grad()
    def embed(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) normalised crops -> embeddings (N, D) and class probabilities (N, C)."""
        emb = self.model.encode_image(crops.to(self.device), normalize=True)
        scores = (emb @ self.head.T / self.temperature).softmax(1)
        return emb.float().cpu().numpy(), scores.float().cpu().numpy()

    def _none_reason(self) -> str:
        blank = self.regions.get("blank_std")
        if self.regions["source"] == "grid":
            return f"every grid cell is blank (pixel std <= blank_std {blank})"
        return "no mask of the image passed min_pixels" + ("" if blank is None else f" and blank_std {blank}")

    def _truth(self, row: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        from unspur.masks import decode, resize_mask

        column = self.regions.get("truth_column")
        rle = row.get(column) if column else None
        if not isinstance(rle, Mapping):
            return None
        mask = decode(rle)
        mask = mask if mask.shape == shape else resize_mask(mask, shape)
        return ~mask if self.regions.get("truth_invert") else mask

    def _one(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        from unspur.data.torch_dataset import load_image
        from unspur.masks import encode

        image = load_image(row)
        h, w = image.shape[:2]
        regions = image_regions(image, self.regions, str(row.get("mask_rles") or ""))
        if not regions:
            raise ValueError(f"no regions: {row.get('mask_note') or self._none_reason()}")
        whole = Region((0, 0, w, h), None, "image")
        crops = torch.stack([region_tensor(image, r, self.size, **self.norm) for r in [whole, *regions]])
        emb, scores = self.embed(crops)
        truth = self._truth(row, (h, w))
        rows = []
        for i, region in enumerate([whole, *regions]):
            flag = None
            if truth is not None and i > 0:
                flag = truth_overlap(region_mask(region, (h, w)), truth) >= float(self.regions["min_overlap"])
            elif truth is not None:
                flag = bool(truth.any())
            rows.append(
                {
                    "region_id": i - 1,
                    "kind": "image" if i == 0 else "region",
                    "name": region.name,
                    "box": list(region.box),
                    "rle": "" if region.mask is None else json.dumps(encode(region.mask)),
                    "embedding": emb[i],
                    "scores": scores[i],
                    "pred": int(scores[i].argmax()),
                    "truth": flag,
                    "status": "ok",
                    "error": "",
                }
            )
        return rows

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        n = len(batch["image_id"])
        out: dict[str, list[Any]] = {k: [] for k in OUTPUT_COLUMNS}
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            try:
                rows = self._one(row)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                rows = [
                    {
                        "region_id": -1,
                        "kind": "image",
                        "name": "",
                        "box": [],
                        "rle": "",
                        "embedding": np.zeros(0, np.float32),
                        "scores": np.zeros(0, np.float32),
                        "pred": -1,
                        "truth": None,
                        "status": "error",
                        "error": f"{type(err).__name__}: {err}",
                    }
                ]
            split = row.get("split")
            for r in rows:
                out["image_id"].append(str(row["image_id"]))
                out["split"].append("" if split is None else str(split))
                out["label"].append(int(row["label"]) if "label" in row else -1)
                for k, v in r.items():
                    out[k].append(v)
        return {
            k: np.asarray(v) if k in ("label", "region_id", "pred") else _objects(v) for k, v in out.items()
        }


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (np.asarray would stack equal-length arrays into 2-D)."""
    arr = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        arr[i] = value
    return arr
