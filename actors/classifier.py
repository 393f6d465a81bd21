"""Batch inference of an unspur classifier checkpoint, as a plain callable for Ray Data.

``ClassifierPredictor(checkpoint, relevance=None)`` loads the model once in ``__init__`` and runs
it through the checkpoint's model family (``unspur.models.families``);
``__call__`` maps a batch of image-table columns (``image_id``, ``image`` bytes or ``path``,
``label``, ``group``, optional ``mask_rles``: a JSON list of COCO RLEs per image) to
predictions and, with a relevance method, the per-image relevance alignment of
:func:`unspur.metrics.relevance_alignment` (NaN where the image has no mask). Preprocessing is
the training dataset's (:class:`unspur.data.torch_dataset.ImageMaskDataset`, with the model's
input mean/std). A family without relevance maps (``clip``: zero-shot predictions) leaves the
alignment columns NaN. An image that
cannot be decoded becomes an error row (``pred`` -1, ``error`` the reason); the batch goes on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["ClassifierPredictor", "OUTPUT_COLUMNS"]

OUTPUT_COLUMNS = (
    "image_id",
    "label",
    "group",
    "pred",
    "error",
    "has_mask",
    "align_mass_in",
    "align_iou",
    "align_pointing",
)


def _masks_frame(frame: Any) -> Any:
    """The batch's ``mask_rles`` (JSON lists) -> a masks table (image_id, concept, rle), or None."""
    import pandas as pd

    if "mask_rles" not in frame.columns:
        return None
    rows = [
        {"image_id": str(image_id), "concept": "mask", "rle": rle}
        for image_id, text in zip(frame["image_id"], frame["mask_rles"], strict=True)
        if isinstance(text, str) and text
        for rle in json.loads(text)
    ]
    return pd.DataFrame(rows, columns=["image_id", "concept", "rle"])


class ClassifierPredictor:
    """Predict (and optionally measure relevance alignment) with an unspur checkpoint.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. ``relevance``: a key of
    ``unspur.relevance.RELEVANCE`` or None (predictions only).
    """

    def __init__(self, checkpoint: str, relevance: str | None = None, device: str = "auto") -> None:
        from unspur.models import checkpoint_model_config, load_checkpoint
        from unspur.models.families import family_of, input_norm

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model, self.config = load_checkpoint(checkpoint)
        self.model.to(self.device).eval()
        model_cfg = checkpoint_model_config(checkpoint)
        self.family = family_of(model_cfg)
        self.img_size = model_cfg.img_size
        self.norm = input_norm(self.model)
        if relevance is not None and "relevance" not in self.family.outputs:
            relevance = None  # e.g. a clip model: predictions only, alignment columns NaN
        if relevance is not None:
            from unspur.relevance import RELEVANCE

            if relevance not in RELEVANCE:
                raise ValueError(f"unknown relevance method {relevance!r}; choose one of {sorted(RELEVANCE)}")
        self.relevance = relevance

    def _items(self, frame: Any) -> tuple[list[dict[str, Any] | None], list[str]]:
        from PIL import Image

        from unspur.data.torch_dataset import ImageMaskDataset

        bad_image = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
        dataset = ImageMaskDataset(
            frame, _masks_frame(frame), img_size=self.img_size, cache=False, **self.norm
        )
        items: list[dict[str, Any] | None] = []
        errors: list[str] = []
        for i in range(len(dataset)):
            try:
                items.append(dataset[i])
                errors.append("")
            except bad_image as err:  # undecodable, missing or oversized image
                items.append(None)
                errors.append(f"{type(err).__name__}: {err}")
        return items, errors

    def _forward(self, images: torch.Tensor, masks: torch.Tensor, has_mask: np.ndarray):
        """-> preds (B,), alignment (B, 3) of mass_in / iou / pointing (NaN without a mask)."""
        align = np.full((len(images), 3), np.nan)
        batch = {"image": images}
        if self.relevance is None:
            with torch.no_grad():
                logits = self.family.forward(self.model, batch, frozenset({"logits"}))["logits"]
            return logits.argmax(1).cpu().numpy(), align
        from unspur.metrics import relevance_alignment

        needs = frozenset({"logits", "relevance"})
        with torch.enable_grad():
            out = self.family.forward(self.model, batch, needs, relevance=self.relevance)
        logits, phi = out["logits"], out["relevance"]
        phi_np, mask_np = phi.detach().cpu().numpy(), masks.numpy() > 0.5
        for i in np.flatnonzero(has_mask):
            res = relevance_alignment(phi_np[i : i + 1], mask_np[i : i + 1])
            align[i] = (res["mass_in"], res["iou"], res["pointing"])
        return logits.detach().argmax(1).cpu().numpy(), align

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pandas as pd

        frame = pd.DataFrame({k: list(v) for k, v in batch.items()})
        if "group" not in frame.columns:
            frame["group"] = ""
        items, errors = self._items(frame)
        ok = [i for i, item in enumerate(items) if item is not None]
        preds = np.full(len(frame), -1, dtype=np.int64)
        align = np.full((len(frame), 3), np.nan)
        has_mask = np.zeros(len(frame), dtype=bool)
        if ok:
            images = torch.stack([items[i]["image"] for i in ok]).to(self.device)
            masks = torch.stack([items[i]["mask"] for i in ok])
            has_mask[ok] = [bool(items[i]["has_mask"]) for i in ok]
            preds[ok], align[ok] = self._forward(images, masks, has_mask[ok])
        return {
            "image_id": frame["image_id"].astype(str).to_numpy(),
            "label": frame["label"].astype(np.int64).to_numpy(),
            "group": frame["group"].astype(str).to_numpy(),
            "pred": preds,
            "error": np.asarray(errors, dtype=object),
            "has_mask": has_mask,
            "align_mass_in": align[:, 0],
            "align_iou": align[:, 1],
            "align_pointing": align[:, 2],
        }
