"""Ray executor: segments (and whole image files) as Ray tasks on an existing cluster.

Imported only when ``--ray`` is given (``pip install vsr[cluster]``). Every node needs vsr
installed and must see the inputs at the same paths (shared storage); results come back
to the driver as bytes, so the output folder and the job store stay on the driver's machine.
A task asks for one GPU (and one CPU) when the cluster has GPUs and ``--devices`` is auto or
names CUDA devices (CUDA asked for on a cluster without GPUs is a ConfigError), else one CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from vsr.errors import ConfigError, Interrupted
from vsr.io.output import store_file
from vsr.jobs.segments import HandleCache, Task, TaskResult, run_task
from vsr.jobs.workers import INTERRUPTED

log = logging.getLogger(__name__)

_HANDLES: dict[str, HandleCache] = {}  # per Ray worker process: models load once


def compute_remote(task: Task, device: str) -> tuple[bytes, TaskResult]:
    """Runs on a Ray worker: compute ``task`` into a local temporary file, return its bytes."""
    if device not in _HANDLES:
        _HANDLES[device] = HandleCache(device)
    with tempfile.TemporaryDirectory(prefix="vsr-ray-") as tmp:
        local = Path(tmp) / f"result{task.path.suffix}"
        result = run_task(dataclasses.replace(task, path=local, overwrite=True),
                          _HANDLES[device])
        return local.read_bytes(), result


_KEPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _connect(address: str):
    """(the ray module, whether this call connected it: False where the caller had)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'vsr[cluster]'") from exc
    started = not ray.is_initialized()
    if started:
        # ray.init puts in a SIGTERM handler of its own (sys.exit(15), and a native stack dump
        # from its core worker): the caller's (the CLI's: exit 143, one line) is put back
        main = threading.current_thread() is threading.main_thread()
        kept = {s: signal.getsignal(s) for s in _KEPT_SIGNALS} if main else {}
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
        finally:
            for number, handler in kept.items():
                if handler is not None:
                    signal.signal(number, handler)
    return ray, started


def _placement(ray, devices: tuple[str, ...]) -> tuple[dict, str, int]:
    """(task resources, device name inside the task, tasks to keep in flight)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    want_cuda = any(d.startswith("cuda") for d in devices)
    if want_cuda and not gpus:
        raise ConfigError("CUDA devices were asked for but the Ray cluster has no GPUs")
    if gpus and (want_cuda or devices == ("auto",)):
        return {"num_gpus": 1, "num_cpus": 1}, "cuda", 2 * gpus
    return {"num_cpus": 1}, "cpu", 2 * max(1, cpus)


def run_on_ray(tasks: list[Task], tracker, address: str, devices: tuple[str, ...],
               report: Callable[[], None] | None = None) -> None:
    """Run every task as a Ray task; results are written and recorded by the driver."""
    ray, started = _connect(address)
    options, device, window = _placement(ray, devices)
    remote = ray.remote(compute_remote).options(max_retries=0, **options)
    log.info("Ray: %d tasks, %s per task, %d in flight", len(tasks), options, window)
    todo = list(reversed(tasks))
    running: dict = {}
    try:
        while todo or running:
            while todo and len(running) < window:
                task = todo.pop()
                if tracker.claim(task):
                    running[remote.remote(task, device)] = task
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
            for ref in ready:
                task = running.pop(ref)
                try:
                    data, result = ray.get(ref)
                    # a whole file is the output itself: one that appeared meanwhile is kept
                    # (as a local run keeps it), unless --overwrite; a segment file is ours
                    store_file(task.path, data,
                               replace=task.overwrite or task.segment is not None)
                    tracker.finished(task, result)
                except Exception as exc:  # one task's failure fails its file only
                    tracker.task_failed(task, getattr(exc, "cause", None) or exc)
            if report is not None:
                report()
    except KeyboardInterrupt as exc:
        if started:
            # the driver goes, and the job's tasks with it. Not ray.cancel(force=True): a
            # task that ended meanwhile failed Ray's core worker check ('Tried to complete
            # task that was not pending'), and the CLI exited 1 instead of 130/143 (1 in 6)
            with contextlib.suppress(Exception):
                ray.shutdown()
        else:  # the caller's own Ray session stays: only this run's tasks go
            for ref in running:
                ray.cancel(ref, force=True)
        raise Interrupted(INTERRUPTED) from exc
