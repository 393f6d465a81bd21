"""SEraser's prompt tuner as a plain callable for Ray Data (``unspur adapt``).

``PromptTunerActor(checkpoint, seraser)`` loads a clip-family checkpoint once in ``__init__``;
``__call__`` maps a batch of image-table columns (``image_id``, ``image`` bytes or ``path``,
``label``, optional ``group``) plus the image's masks (``mask_rles``: a JSON list of COCO RLEs,
the image's ok masks; ``mask_note``: why there are none) to prediction rows
(:data:`OUTPUT_COLUMNS`). Images are read like the training data
(:class:`unspur.data.torch_dataset.ImageMaskDataset`: resized to the model's input size, mask =
union of the RLEs); the tuning is :class:`unspur.seraser.PromptTuner`, ``seraser.episodes``
images at a time.

Rows: ``ok`` (zero-shot and tuned predictions); ``error`` (the image cannot be read, or it has no
usable mask and ``on_missing_mask`` is ``error``: ``pred``/``pred_before`` -1, ``error`` the
reason); ``zero_shot`` (no usable mask and ``on_missing_mask: zero_shot``: the tuned columns
repeat the zero-shot ones, ``error`` keeps the reason). Rows in == rows out. With
``zero_shot_reason`` set (a failed ``unspur adapt`` check) no image is tuned: every readable
image is a ``zero_shot`` row with that reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["OUTPUT_COLUMNS", "PromptTunerActor", "masks_frame"]

OUTPUT_COLUMNS = (
    "image_id",
    "label",
    "group",
    "pred_before",
    "pred",
    "probs_before",
    "probs",
    "status",
    "error",
    "loss_start",
    "loss_end",
)


def masks_frame(frame: Any) -> Any:
    """The batch's ``mask_rles`` (JSON lists) -> a masks table (image_id, concept, rle)."""
    import pandas as pd

    rows = [
        {"image_id": str(image_id), "concept": "mask", "rle": rle}
        for image_id, text in zip(frame["image_id"], frame.get("mask_rles", [""] * len(frame)), strict=True)
        if isinstance(text, str) and text
        for rle in json.loads(text)
    ]
    return pd.DataFrame(rows, columns=["image_id", "concept", "rle"])


class PromptTunerActor:
    """SEraser predictions for batches of image rows (see the module docstring).

    ``seraser``: a :class:`unspur.config.adapt.SEraserConfig` as a dict; ``device``: ``auto``
    (CUDA when available), ``cpu``, ``cuda``; ``threads``: torch threads (0 = leave as is);
    ``zero_shot_reason``: when set, keep the zero-shot head for every image, with this reason.
    """

    def __init__(
        self,
        checkpoint: str,
        seraser: Mapping[str, Any],
        device: str = "auto",
        threads: int = 0,
        zero_shot_reason: str = "",
    ):
        from unspur.config.adapt import SEraserConfig
        from unspur.models import checkpoint_model_config, load_checkpoint
        from unspur.seraser import PromptTuner

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model_cfg = checkpoint_model_config(checkpoint)
        if getattr(model_cfg, "family", "timm") != "clip":
            raise ValueError(
                f"SEraser tunes a CLIP prompt; checkpoint {checkpoint} is a {model_cfg.family} model"
            )
        model, _ = load_checkpoint(checkpoint)
        model.to(device)
        spec = model.zero_shot
        self.cfg = SEraserConfig.model_validate(dict(seraser))
        self.tuner = PromptTuner(model, spec.tokenizer, spec.classes, self.cfg, spec.templates)
        self.img_size = model_cfg.img_size
        self.n_classes = len(spec.classes)
        self.zero_shot_reason = zero_shot_reason

    def _load(self, frame: Any) -> tuple[list[tuple[torch.Tensor, torch.Tensor] | None], list[str]]:
        """-> per row (image (3, S, S) in [0, 1], mask (S, S) bool) or None, and the reason."""
        from PIL import Image

        from unspur.data.torch_dataset import ImageMaskDataset

        dataset = ImageMaskDataset(
            frame, masks_frame(frame), img_size=self.img_size, mean=(0.0,) * 3, std=(1.0,) * 3, cache=False
        )
        items: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        reasons: list[str] = []
        for i in range(len(dataset)):
            try:
                item = dataset[i]
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                items.append(None)
                reasons.append(f"{type(err).__name__}: {err}")
                continue
            items.append((item["image"], item["mask"] > 0.5))
            reasons.append("" if item["has_mask"] else self._no_mask(frame, i, dataset.errors))
        return items, reasons

    @staticmethod
    def _no_mask(frame: Any, index: int, errors: list[dict[str, str]]) -> str:
        image_id = str(frame["image_id"].iloc[index])
        found = [e["error"] for e in errors if e["image_id"] == image_id]
        note = frame["mask_note"].iloc[index] if "mask_note" in frame.columns else ""
        detail = found[0] if found else (note if isinstance(note, str) and note else "its masks are empty")
        return f"no usable mask: {detail}"

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pandas as pd

        frame = pd.DataFrame({k: list(v) for k, v in batch.items()})
        n, c = len(frame), self.n_classes
        items, reasons = self._load(frame)
        if self.zero_shot_reason:
            reasons = [
                r if item is None else self.zero_shot_reason for item, r in zip(items, reasons, strict=True)
            ]
        status = [
            "ok" if item is not None and not r else "error" for item, r in zip(items, reasons, strict=True)
        ]
        pred_before, pred = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        probs_before, probs = np.full((n, c), np.nan, np.float32), np.full((n, c), np.nan, np.float32)
        loss = np.full((n, 2), np.nan)
        tune = [i for i in range(n) if status[i] == "ok"]
        for start in range(0, len(tune), self.cfg.episodes):
            rows = tune[start : start + self.cfg.episodes]
            images = torch.stack([items[i][0] for i in rows])
            masks = torch.stack([items[i][1] for i in rows])
            result = self.tuner.run(images, masks, [str(frame["image_id"].iloc[i]) for i in rows])
            probs_before[rows] = result.zero_shot.softmax(1).numpy()
            probs[rows] = result.tuned.softmax(1).numpy()
            loss[rows] = torch.stack([result.loss_start, result.loss_end], 1).numpy()
        fallback = [i for i in range(n) if items[i] is not None and reasons[i] and self._falls_back()]
        if fallback:
            zero_shot = self.tuner.zero_shot(torch.stack([items[i][0] for i in fallback])).softmax(1).numpy()
            probs_before[fallback] = probs[fallback] = zero_shot
            for i in fallback:
                status[i] = "zero_shot"
        done = [i for i in range(n) if status[i] != "error"]
        pred_before[done] = probs_before[done].argmax(1)
        pred[done] = probs[done].argmax(1)
        groups = frame["group"] if "group" in frame.columns else pd.Series([""] * n)
        return {
            "image_id": frame["image_id"].astype(str).to_numpy(),
            "label": frame["label"].astype(np.int64).to_numpy() if "label" in frame else np.full(n, -1),
            "group": np.asarray(["" if _missing(g) else str(g) for g in groups], dtype=object),
            "pred_before": pred_before,
            "pred": pred,
            "probs_before": probs_before,
            "probs": probs,
            "status": np.asarray(status, dtype=object),
            "error": np.asarray(reasons, dtype=object),
            "loss_start": loss[:, 0],
            "loss_end": loss[:, 1],
        }

    def _falls_back(self) -> bool:
        return self.cfg.on_missing_mask == "zero_shot" or bool(self.zero_shot_reason)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
