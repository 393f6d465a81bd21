"""Training fault drill, run as its own process by ``test_fault_drills.py``.

Starts a local Ray of 2 CPUs WITH its dashboard (the State API lists actors through it), runs
``unspur finetune`` twice with the same seed: uninterrupted into ``<root>/plain``, then into
``<root>/killed`` while a thread waits for the second checkpoint of that run and SIGKILLs the process
of one Ray Train worker (``RayTrainWorker`` actor, pid from ``ray.util.state.list_actors``) in the
middle of the next epoch. Ray Train restarts the worker group from the last checkpoint
(``run.max_failures``). Writes ``<root>/drill.json``: both exit codes and what was killed when.

    python tests/workflows/fault_drill.py ROOT [finetune overrides ...]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _checkpoints(storage: Path) -> list[Path]:
    return sorted(storage.glob("checkpoint_*/extra.json"))


def _train_workers(address: str, alive: bool = True) -> list[Any]:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", "ALIVE")] if alive else [])
    return list_actors(address=address, filters=filters, detail=True, timeout=60, limit=1000)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def _started(pid: int) -> float:
    """When process ``pid`` started, in epoch seconds (Linux ``/proc``; 0 when it is gone)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def kill_a_worker(
    storage: Path, record: dict[str, Any], address: str, earlier: set[str], timeout: float = 600.0
) -> None:
    """Find the run's live Ray Train workers through the State API (while epoch 0 runs), wait for
    its second checkpoint on disk (a folder can be on disk before Ray Train registers it: a kill
    right after the first one restarted a busy run from scratch), let the next epoch start, then SIGKILL one worker's process; ``record``
    gets the pid, the time and the checkpoints on disk at that moment. ``earlier``: actor ids of
    the workers of runs before this one (a finished run's workers may still be alive)."""
    deadline = time.monotonic() + timeout
    workers: list[Any] = []
    while len(workers) < 2:
        if time.monotonic() > deadline:
            record["error"] = f"{len(workers)} live RayTrainWorker actors before the timeout"
            return
        workers = [a for a in _train_workers(address) if a.actor_id not in earlier]
    while len(_checkpoints(storage)) < 2:  # epoch 1 written: epoch 0's checkpoint is registered
        if time.monotonic() > deadline:
            record["error"] = "no checkpoint before the timeout"
            return
        time.sleep(0.05)
    time.sleep(record["delay_s"])  # into the next epoch (no second State API call here: it can
    # take seconds, and a small run may finish its epochs before the kill lands)
    # a worker of the earlier run can still be alive and missing from ``earlier`` (the State API
    # lags): killing it costs this run nothing, so prefer processes started after this run began
    fresh = [a for a in workers if _started(a.pid) >= record["run_started"]]
    record["fresh_workers"] = len(fresh)
    victim = sorted(fresh or workers, key=lambda a: a.actor_id)[-1]
    record["checkpoint_epochs_at_kill"] = sorted(
        json.loads(p.read_text())["epoch"] for p in _checkpoints(storage)
    )
    record["victim"] = {"actor_id": victim.actor_id, "cmdline": _cmdline(victim.pid)}
    os.kill(victim.pid, signal.SIGKILL)
    record.update({"killed_pid": victim.pid, "live_workers": len(workers), "killed_at": time.time()})
    time.sleep(1.0)
    record["victim"]["gone_1s_later"] = not Path(f"/proc/{victim.pid}").exists()
    record["victim"]["actor_state_1s_later"] = next(
        (a.state for a in _train_workers(address, alive=False) if a.actor_id == victim.actor_id), None
    )


def main(argv: list[str]) -> int:
    import ray

    root, overrides = Path(argv[0]), argv[1:]
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        return run_drill(root, overrides)
    finally:
        ray.shutdown()


def run_drill(root: Path, overrides: list[str]) -> int:
    import ray

    from unspur.workflows.finetune import job

    drill: dict[str, Any] = {}
    start = time.perf_counter()
    drill["plain_rc"] = job.main(["--out", str(root / "plain"), *overrides, "run.name=drill"])
    drill["plain_s"] = round(time.perf_counter() - start, 1)
    record: dict[str, Any] = {"delay_s": 0.5}
    address = ray.get_runtime_context().gcs_address
    earlier = {a.actor_id for a in _train_workers(address, alive=False)}
    killer = threading.Thread(
        target=kill_a_worker,
        args=(root / "killed" / "checkpoints" / "drill", record, address, earlier),
        daemon=True,
    )
    record["run_started"] = time.time()
    killer.start()
    start = time.perf_counter()
    drill["killed_rc"] = job.main(["--out", str(root / "killed"), *overrides, "run.name=drill"])
    drill["killed_s"] = round(time.perf_counter() - start, 1)
    killer.join(timeout=60)
    drill["kill"] = record
    (root / "drill.json").write_text(json.dumps(drill, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
