"""Where the finetune loop runs: :class:`LocalSession` (in-process, ``run.num_workers`` 0) or
:class:`RaySession` (a Ray Train worker). Both give the loop the same five calls: prepare the
model and the loader, reduce loss terms over workers, find the latest checkpoint, report an epoch.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unspur.io import write_dir_atomic
from unspur.models.resume import TRAIN_STATE

__all__ = ["LocalSession", "RaySession", "flat_numbers"]


class LocalSession:
    """In-process execution: rank 0 of 1, checkpoints in ``root/checkpoint_<epoch:06d>``."""

    rank = 0
    world_size = 1

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, keep
        self.root.mkdir(parents=True, exist_ok=True)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def reduce(self, terms: dict[str, float], device: torch.device) -> dict[str, float]:
        return terms

    def prepare_loader(self, loader: DataLoader, seed: int = 0) -> DataLoader:
        return loader  # shuffled by torch's global generator, seeded with train.seed

    def _checkpoints(self) -> list[Path]:
        return sorted(p for p in self.root.glob("checkpoint_*") if (p / TRAIN_STATE).is_file())

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self._checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], write: Callable[[Path], None], epoch: int) -> None:
        write_dir_atomic(self.root / f"checkpoint_{epoch:06d}", write)
        for old in self._checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RaySession:
    """Inside a Ray Train worker: DDP via ``prepare_model``, reports via ``ray.train.report``."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def reduce(self, terms: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average each loss term over the workers (``n_*`` counts are summed)."""
        import torch.distributed as dist

        if self.world_size < 2 or not dist.is_initialized():
            return terms
        keys = sorted(terms)
        values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(values)
        return {
            k: float(v) if k.startswith("n_") else float(v) / self.world_size
            for k, v in zip(keys, values.tolist(), strict=True)
        }

    def prepare_loader(self, loader: DataLoader, seed: int = 0) -> DataLoader:
        import ray.train.torch

        if self.world_size > 1:  # Ray's own DistributedSampler would shuffle with seed 0, not train.seed
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(loader.dataset, shuffle=True, seed=seed)
            loader = DataLoader(
                loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers
            )
        return ray.train.torch.prepare_data_loader(loader)

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], write: Callable[[Path], None], epoch: int) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                write(Path(tmp))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(flat_numbers(metrics), checkpoint=checkpoint)


def flat_numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> ``{"a/b": number}`` (non-numbers dropped), as Ray Train reports them."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out
