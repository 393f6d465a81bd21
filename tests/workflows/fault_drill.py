"""Training fault drill, run as its own process by ``test_fault_drills.py``.

Starts a local Ray of 2 CPUs WITH its dashboard (the State API lists actors through it), runs
``unspur finetune`` twice with the same seed: uninterrupted into ``<root>/plain``, then into
``<root>/killed`` while a thread waits until Ray Train has registered a checkpoint of that run and
SIGKILLs the process of one of its live Ray Train workers (``RayTrainWorker`` actor, pid from
``ray.util.state.list_actors`` at that moment) in the middle of the next epoch. Ray Train restarts
the worker group from the last checkpoint (``run.max_failures``). Writes ``<root>/drill.json``: both exit codes and what was killed when.

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


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the run's checkpoints


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


def _registered(storage: Path) -> int:
    """Checkpoints Ray Train has registered for the run: those a restarted worker group resumes from.
    A checkpoint folder is on disk before that (the controller collects the workers' reports when it
    polls them, every 2 s): a worker killed in between restarts the run from scratch."""
    try:
        return len(json.loads((storage / SNAPSHOT).read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


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


def _run_workers(address: str, earlier: set[str], since: float) -> list[Any]:
    """The live Ray Train workers of the drilled run: not seen before it, process started after it began."""
    return [a for a in _train_workers(address) if a.actor_id not in earlier and _started(a.pid) >= since]


def kill_a_worker(
    storage: Path, record: dict[str, Any], address: str, earlier: set[str], timeout: float = 600.0
) -> None:
    """Wait until Ray Train has registered a checkpoint of the run (its checkpoint manager's snapshot
    lists one), let the next epoch start, list the run's live Ray Train workers through the State API and SIGKILL one
    worker's process; ``record`` gets the pid, the time and the checkpoints on disk at that moment.
    ``earlier``: actor ids of the workers of runs before this one. The workers are listed at the
    kill, not while epoch 0 runs: the worker group seen then need not be the one that trains later
    (``record["early_workers"]`` against ``record["victim"]`` shows whether it was)."""
    deadline = time.monotonic() + timeout
    early: list[Any] = []
    while len(early) < 2 and time.monotonic() < deadline:
        early = _run_workers(address, earlier, record["run_started"])
        time.sleep(0.2)
    record["early_workers"] = sorted(a.actor_id for a in early)
    while _registered(storage) < 1:
        if time.monotonic() > deadline:
            record["error"] = "no checkpoint registered before the timeout"
            return
        time.sleep(0.05)
    time.sleep(record["delay_s"])  # into the next epoch
    workers = _run_workers(address, earlier, record["run_started"])
    if len(workers) < 2:
        record["error"] = f"{len(workers)} live RayTrainWorker actors of the run at the kill"
        return
    victim = sorted(workers, key=lambda a: a.actor_id)[-1]
    record["checkpoint_epochs_at_kill"] = sorted(
        json.loads(p.read_text())["epoch"] for p in _checkpoints(storage)
    )
    record["registered_at_kill"] = _registered(storage)
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
