"""``ground_truth`` segmenter: masks a dataset already has, matched to concept strings.

Sources: a parts table (Parquet: ``image_id``, ``part``, ``rle``; SpuriousWorld writes one) or a
mask folder (``<mask_dir>/<image_id>/<part>.png``, non-zero = inside). A concept matches a part by
its exact name, else by its head noun: "long beak" -> beak, "bicycle wheel" -> wheel, "tip of the
wing" -> tip, plurals folded ("wings" -> wing). Decoding the stored RLE gives the stored mask
exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unspur.actors.segmenter_api import ConceptMask, GroundTruthConfig
from unspur.masks import decode

__all__ = ["GroundTruth", "head_noun", "match_part", "load_parts_table"]

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("_", " "))


def _singular(word: str) -> list[str]:
    """The word and its plausible singulars ("wings" -> wing, "boxes" -> box, "leaves" -> leaf)."""
    forms = [word]
    if word.endswith("ves") and len(word) > 4:
        forms += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.append(word[:-1])
    return forms


def head_noun(concept: str) -> str:
    """The head noun of an English noun phrase: the last word before any "of" ("long beak" -> beak)."""
    words = _words(concept)
    if "of" in words[1:]:
        words = words[: words.index("of", 1)]
    return words[-1] if words else ""


def match_part(concept: str, parts: Iterable[str]) -> str | None:
    """The part ``concept`` names: exact (case/plural-insensitive), else by head noun; None if none."""
    by_name: dict[str, str] = {}
    for part in parts:
        by_name.setdefault(" ".join(_words(part)), part)
    phrase = " ".join(_words(concept))
    candidates = [phrase]
    if phrase:
        head = head_noun(concept)
        prefix = phrase.rsplit(" ", 1)[0] + " " if " " in phrase else ""
        candidates += [prefix + form for form in _singular(phrase.rsplit(" ", 1)[-1])]
        candidates += _singular(head)
    for cand in candidates:
        if cand in by_name:
            return by_name[cand]
    return None


def load_parts_table(path: str | Path) -> dict[str, dict[str, Mapping[str, Any]]]:
    """Parquet parts table -> ``{image_id: {part: rle}}``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parts table {path} does not exist; set segmenter.ground_truth.parts")
    table = pq.read_table(path, columns=None)
    missing = {"image_id", "part", "rle"} - set(table.column_names)
    if missing:
        raise ValueError(f"parts table {path} lacks columns {sorted(missing)} (needs image_id, part, rle)")
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for image_id, part, rle in zip(
        *(table.column(c).to_pylist() for c in ("image_id", "part", "rle")), strict=True
    ):
        out.setdefault(str(image_id), {})[str(part)] = rle
    return out


def _folder_source(root: Path) -> Callable[[str], dict[str, np.ndarray]]:
    from PIL import Image

    if not root.is_dir():
        raise FileNotFoundError(f"mask folder {root} does not exist; set segmenter.ground_truth.mask_dir")

    def lookup(image_id: str) -> dict[str, np.ndarray]:
        folder = root / image_id
        masks = {}
        for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            with Image.open(png) as img:
                masks[png.stem] = np.asarray(img.convert("L")) > 0
        return masks

    return lookup


class GroundTruth:
    """Segmenter over stored masks: ``lookup(image_id) -> {part: RLE dict or (H, W) bool}``."""

    name = "ground_truth"

    def __init__(self, lookup: Callable[[str], Mapping[str, Any]]) -> None:
        self.lookup = lookup
        self._parts: Mapping[str, Any] = {}
        self._shape: tuple[int, int] = (0, 0)

    @classmethod
    def from_config(cls, cfg: GroundTruthConfig) -> GroundTruth:
        if cfg.parts:
            table = load_parts_table(cfg.parts)
            return cls(lambda image_id: table.get(image_id, {}))
        if cfg.mask_dir:
            return cls(_folder_source(Path(cfg.mask_dir)))
        raise ValueError("segmenter.ground_truth needs parts (a parts table) or mask_dir (a mask folder)")

    def set_image(self, image: np.ndarray, image_id: str = "") -> None:
        """Look up the stored masks of ``image_id`` (the image only gives the expected size)."""
        self._shape = (int(image.shape[0]), int(image.shape[1]))
        self._parts = self.lookup(image_id)

    def predict(self, concepts: Sequence[str]) -> list[ConceptMask]:
        out = []
        for concept in concepts:
            part = match_part(concept, self._parts)
            if part is None:
                note = f"no ground-truth part matches {concept!r} (parts: {sorted(self._parts)})"
                out.append(ConceptMask(concept, None, None, "empty", note))
                continue
            stored = self._parts[part]
            mask = np.asarray(stored, dtype=bool) if isinstance(stored, np.ndarray) else decode(stored)
            if mask.shape != self._shape:
                note = (
                    f"ground-truth mask {part!r} is {mask.shape[0]}x{mask.shape[1]}, image is {self._shape}"
                )
                out.append(ConceptMask(concept, None, None, "error", note))
                continue
            out.append(
                ConceptMask.found(concept, mask, 1.0, f"ground-truth part {part!r} is empty in this image")
            )
        return out
