"""The predictor API every segmenter backend implements, and the answer it gives per concept.

Backends (``actors/grounded_sam.py``, ``actors/clipseg.py``, ``actors/ground_truth.py``) import
this module; ``actors/segmenters.py`` registers them by name and runs them in Ray Data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["ConceptMask", "Segmenter"]


@dataclass
class ConceptMask:
    """The answer for one concept: ``mask`` (H, W) bool at the image's size, or None.

    ``status``: ``ok`` (non-empty mask), ``empty`` (nothing found), ``error``; ``note`` says why a
    mask is empty or failed; ``score`` is the backend's confidence in [0, 1] (None if none).
    """

    concept: str
    mask: np.ndarray | None
    score: float | None = None
    status: str = "ok"
    note: str | None = None

    @classmethod
    def found(cls, concept: str, mask: np.ndarray, score: float | None, empty_note: str) -> ConceptMask:
        """``ok`` when ``mask`` has a pixel set, else ``empty`` with ``empty_note``."""
        if mask.any():
            return cls(concept, mask, score, "ok")
        return cls(concept, None, score, "empty", empty_note)


class Segmenter(Protocol):
    """Predictor API of every backend: encode an image once, answer many concept prompts."""

    name: str

    def set_image(self, image: np.ndarray, image_id: str = "") -> None:
        """Encode ``image`` ((H, W, 3) uint8 RGB) once; ``image_id`` names it (ground truth lookup)."""

    def predict(self, concepts: Sequence[str]) -> list[ConceptMask]:
        """One :class:`ConceptMask` per concept (same order), masks (H, W) at the set image's size."""
