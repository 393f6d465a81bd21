"""Config of ``unspur evaluate``."""

from __future__ import annotations

from pydantic import model_validator

from unspur.config.base import StrictModel

__all__ = ["EvaluateConfig"]


class EvaluateConfig(StrictModel):
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
    batch_size: int = 64
    relevance: str | None = "rollout"
    num_actors: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    experiment: str = "evaluate"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.batch_size < 1 or self.num_actors < 1:
            raise ValueError(
                f"batch_size and num_actors must be >= 1, got {self.batch_size}, {self.num_actors}"
            )
        if self.num_cpus < 0 or self.num_gpus < 0 or self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        return self
