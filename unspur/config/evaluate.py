"""Config of ``unspur evaluate``."""

from __future__ import annotations

from pydantic import Field

from unspur.config.base import ActorResources

__all__ = ["EvaluateConfig"]


class EvaluateConfig(ActorResources):
    """``unspur evaluate``: accuracy, per-group / worst-group accuracy and relevance alignment.

    ``checkpoint`` is an unspur checkpoint folder; ``images`` the dataset read by the adapter
    ``adapter`` (``unspur.data.adapters.ADAPTERS``: a Parquet image table, an image folder, a
    Waterbirds root); ``masks`` an optional masks / parts table (``image_id``, ``concept`` or
    ``part``, ``rle``) for relevance alignment; ``split`` None = every row. ``relevance`` None
    skips relevance alignment. Inference runs on ``num_actors`` Ray Data actors of ``num_cpus`` /
    ``num_gpus`` each (fractional CPUs keep reads alive on small machines).
    """

    out: str = "runs/evaluate"
    checkpoint: str
    images: str
    adapter: str = "parquet"
    masks: str | None = None
    split: str | None = "test"
    classes: list[str] | None = None
    batch_size: int = Field(64, ge=1)
    relevance: str | None = "rollout"
    num_actors: int = Field(1, ge=1)
    experiment: str = "evaluate"
    track: bool = True
