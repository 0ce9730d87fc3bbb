"""Entry point of a training run: one process, torchrun ranks, or ``nproc`` spawned ranks."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vsr.errors
from vsr.errors import ConfigError, VsrError
from vsr.train.config import TrainConfig
from vsr.train.lock import folder_lock
from vsr.train.state import state_paths
from vsr.train.trainer import (
    CONFIG_FILE,
    METRICS_FILE,
    STATE_FILE,
    STATE_STEM,
    StepReport,
    Trainer,
    TrainResult,
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _worker(rank: int, world: int, port: int, config: TrainConfig, resume: bool,
            out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group(_backend(), rank=rank, world_size=world)
    try:
        result = Trainer(config, resume=resume).run()
        if rank == 0:
            Path(out).write_text(json.dumps({str(k): v for k, v in result.losses.items()} |
                                            {"_best": result.best_psnr,
                                             "_seconds": result.seconds,
                                             "_samples_per_s": result.samples_per_s,
                                             "_steps": result.steps,
                                             "_stopped": result.stopped,
                                             "_flops": result.flops_per_sample,
                                             "_peak": result.peak_tflops,
                                             "_fp16": result.fp16}))
    except VsrError as exc:  # for the parent to raise as itself, not as a rank's traceback
        Path(f"{out}.error{rank}").write_text(json.dumps({"type": type(exc).__name__,
                                                          "message": str(exc)}))
        raise
    finally:
        dist.destroy_process_group()


def _rank_error(result_file: Path) -> VsrError | None:
    """The error a spawned rank stopped with (the lowest rank's), as the library's own class;
    None if none wrote one. The files are removed."""
    found = sorted(result_file.parent.glob(f"{result_file.name}.error*"))
    errors = []
    for path in found:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        finally:
            path.unlink(missing_ok=True)
        cls = getattr(vsr.errors, str(raw.get("type")), VsrError)
        if not (isinstance(cls, type) and issubclass(cls, VsrError)):
            cls = VsrError
        errors.append(cls(str(raw.get("message"))))
    return errors[0] if errors else None


# what a run writes in its folder besides the state (vsr.train.trainer)
_RUN_FILES = (CONFIG_FILE, METRICS_FILE, "metrics.png", "last.safetensors", "best.safetensors",
              "model-fp16.safetensors")


def check_run_dir(config: TrainConfig, resume: bool) -> None:
    """Raise ConfigError unless ``config.out`` suits the run: a resume needs a saved state; a
    new run may not replace any file a run writes there, but the config and metrics of one
    stopped before its first save (they are worthless without a state)."""
    out = Path(config.out)
    state = state_paths(out, STATE_STEM)
    if resume and not state:
        raise ConfigError(f"{config.out}: nothing to resume (no {STATE_FILE} or its shards)")
    if not resume and state:
        raise ConfigError(f"{config.out} already holds a run; use --resume to continue it "
                          "or choose another --out")
    if resume:
        return
    held = [name for name in _RUN_FILES if (out / name).exists()]
    restartable = held == [CONFIG_FILE, METRICS_FILE][:len(held)] and not _foreign_config(out)
    if not restartable:
        raise ConfigError(f"{config.out} already holds {', '.join(held)}, not of a run this "
                          "could restart; choose another --out or move them away")


def _foreign_config(out: Path) -> bool:
    """Whether ``out`` holds a config.json that is not a training run's."""
    path = out / CONFIG_FILE
    if not path.exists():
        return False
    try:
        TrainConfig.load(path)
    except ConfigError:
        return True
    return False


def train(config: TrainConfig, *, resume: bool = False, nproc: int = 1,
          progress: Callable[[StepReport], None] | None = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Run (or resume) training. Under torchrun (WORLD_SIZE set) this process is one rank;
    with ``nproc`` > 1 the ranks are spawned here on 127.0.0.1.

    Setting ``stop`` (from another thread or a signal handler) ends the run after the current
    step with a resumable state (:meth:`Trainer.run`); spawned ranks (``nproc`` > 1) do not
    see it: they stop at the time limit or when killed, resumable from their last save."""
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}")
    if config.batch_size % nproc:
        raise ConfigError(f"batch size {config.batch_size} does not split over {nproc} processes")
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1 and not dist.is_initialized():
        dist.init_process_group(_backend())
    lead = not dist.is_initialized() or dist.get_rank() == 0
    # one run at a time in a folder: held by this process (rank 0, or the ranks' parent)
    with folder_lock(config.out, "vsr train") if lead else nullcontext():
        if lead:
            check_run_dir(config, resume)
        return _train(config, resume, nproc, progress, stop)


def _train(config: TrainConfig, resume: bool, nproc: int,
           progress: Callable[[StepReport], None] | None,
           stop: threading.Event | None) -> TrainResult:
    if nproc == 1 or dist.is_initialized():
        return Trainer(config, resume=resume).run(progress, stop=stop)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / ".spawn-result.json"
    try:
        mp.spawn(_worker, args=(nproc, _free_port(), config, resume, str(result_file)),
                 nprocs=nproc, join=True)
    except Exception:  # a rank failed: mp.spawn reports its traceback as text
        error = _rank_error(result_file)
        if error is None:
            raise
        raise error from None
    raw = json.loads(result_file.read_text())
    result_file.unlink()
    result = TrainResult(out, raw.pop("_steps"), best_psnr=raw.pop("_best"),
                         seconds=raw.pop("_seconds"), samples_per_s=raw.pop("_samples_per_s"),
                         iterations=config.iterations, stopped=raw.pop("_stopped"),
                         flops_per_sample=raw.pop("_flops"), peak_tflops=raw.pop("_peak"),
                         fp16=raw.pop("_fp16"))
    result.losses = {int(k): v for k, v in raw.items()}
    return result
