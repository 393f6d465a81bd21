"""What one sweep trial holds (driver + Ray Train workers) and how many trials fit a cluster."""

from __future__ import annotations

from collections.abc import Mapping

from unspur.config import ConfigError, FinetuneConfig

__all__ = ["DRIVER_MEMORY", "concurrency", "trial_resources"]

DRIVER_MEMORY = 2**20  # bytes: a trial driver's token reservation (Tune needs a non-empty bundle)


def trial_resources(ft: FinetuneConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(Tune's reservation for a trial's driver, everything one trial holds: driver + workers).

    Ray Train workers: the driver holds no CPU (a token of memory), the workers hold
    ``num_workers * cpus_per_worker`` CPUs (and one GPU each with ``use_gpu``). In-process
    (``num_workers`` 0): the driver trains and holds ``cpus_per_worker`` CPUs (and a GPU).
    """
    run = ft.run
    gpus = float(max(run.num_workers, 1)) if run.use_gpu else 0.0
    if run.num_workers == 0:
        driver = {"cpu": run.cpus_per_worker, "gpu": gpus}
        return driver, {"CPU": run.cpus_per_worker, "GPU": gpus}
    return {"cpu": 0, "memory": DRIVER_MEMORY}, {"CPU": run.num_workers * run.cpus_per_worker, "GPU": gpus}


def concurrency(
    cluster: Mapping[str, float], need: Mapping[str, float], requested: int | None, n_trials: int
) -> int:
    """How many trials run at once: what ``cluster`` fits of ``need`` each, capped by ``requested``.

    Raises :class:`ConfigError` when one trial does not fit, or ``requested`` exceeds what fits.
    """
    have = {k: float(cluster.get(k, 0.0)) for k in need}
    fits = min(int(have[k] // v + 1e-9) for k, v in need.items() if v > 0)
    if fits < 1:
        raise ConfigError(
            f"one trial needs {dict(need)} but the cluster has {have}; lower "
            "finetune.run.num_workers / cpus_per_worker, or add nodes"
        )
    if requested is not None and requested > fits:
        raise ConfigError(
            f"max_concurrent_trials={requested} but the cluster's {have} fit only {fits} trials "
            f"of {dict(need)} each; set max_concurrent_trials <= {fits} (or null)"
        )
    return max(1, min(requested or fits, n_trials))
