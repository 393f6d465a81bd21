"""Config of ``unspur sweep``."""

from __future__ import annotations

from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.config.finetune import FinetuneConfig, FinetuneDataConfig, FinetuneRunConfig
from unspur.data.spuriousworld import SpuriousWorldConfig

__all__ = ["SweepConfig"]


def _sweep_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        data=FinetuneDataConfig(spuriousworld=SpuriousWorldConfig(), eval_split="val"),
        run=FinetuneRunConfig(figure_images=0),
    )


class SweepConfig(StrictModel):
    """``unspur sweep``: Ray Tune over ``unspur finetune`` (one trial = one fine-tuning run).

    ``finetune``: the training config of every trial; a trial applies one point of ``space`` (a YAML
    search space, or a bare name like ``cft`` for ``tune_spaces/cft.yaml``) to it and trains into
    ``<out>/trials/<trial id>`` (the sweep sets the trial's ``out``, ``run.name``, ``run.storage_path``
    and turns ``run.track`` off: each trial is an MLflow child run of the sweep's parent run). Trials
    are ranked on ``finetune.data.eval_split``, which must be a validation split, never test.
    ``base``: optional; a model trained once into ``<out>/base`` before the trials (reused when it is
    there with the same config) and used as every trial's ``init_from``. ``num_samples``: trials of a
    random / optuna search (a grid search runs each grid point once).
    ``max_concurrent_trials``: None = as many as the cluster's resources fit (more is refused).
    Tune keeps its state in ``storage_path/name`` (default ``<out>/tune``): rerunning the same command
    resumes an interrupted sweep and re-runs no finished trial. ``trial_max_failures``: retries of a
    failing trial (a trial that still fails is recorded as failed and the sweep goes on).
    """

    out: str = "runs/sweep"
    space: str = "cft"
    finetune: FinetuneConfig = Field(default_factory=_sweep_finetune)
    base: FinetuneConfig | None = None
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    name: str = Field("sweep", pattern=r"^[^/]+$", description="a folder name")
    storage_path: str | None = None
    seed: int = 0
    trial_max_failures: int = Field(0, ge=0)
    experiment: str = "sweep"
    plot: bool = True

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        ft = self.finetune
        if ft.data.eval_split == "test" or ft.data.eval_split == ft.data.train_split:
            raise ValueError(
                f"finetune.data.eval_split is {ft.data.eval_split!r}: a sweep ranks its trials on a "
                "validation split, never on test or training data; set finetune.data.eval_split: val"
            )
        if ft.run.eval_every != 1:
            raise ValueError(
                f"finetune.run.eval_every is {ft.run.eval_every}: trials are scheduled on the "
                "validation metric of every epoch; set finetune.run.eval_every: 1"
            )
        if self.base is not None and ft.init_from:
            raise ValueError(
                "set either base (trained once by the sweep) or finetune.init_from (an existing "
                "checkpoint), not both"
            )
        return self
