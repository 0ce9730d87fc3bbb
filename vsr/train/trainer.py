"""The training loop: dual regression learning of a DRN, single process or DDP."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn

from vsr.device import resolve_device
from vsr.errors import ConfigError, InputError, OutputError, TrainingDiverged
from vsr.io.output import stale_partials, store_file, write_failure, write_reason
from vsr.loading import check_finite_weights
from vsr.models import (
    ARCHITECTURES,
    REGISTRY,
    CheckpointInfo,
    DualNetworks,
    ModelSpec,
    NetworkUpscaler,
    save_model,
)
from vsr.models.checkpoint import load_state_into, load_tensors
from vsr.runtime import configure_runtime
from vsr.train.config import CONFIG_FILE, TrainConfig, consistency_margin
from vsr.train.data import LRSampler, PatchSampler, lr_pyramid, rank_stream, step_generator
from vsr.train.degrade import DegradationSpec, GaussianDegradation, estimate_gaussian_sigma
from vsr.train.flops import peak_tflops, train_flops_per_sample
from vsr.train.losses import (
    consistency_loss,
    cycle_loss,
    degradation_loss,
    dual_loss,
    primal_loss,
)
from vsr.train.memory import check_step_memory
from vsr.train.prefetch import DegradedBatches
from vsr.train.state import (
    load_training_state,
    remove_stale_state,
    restore_rng_state,
    rng_state,
    save_training_state,
    state_paths,
)

log = logging.getLogger(__name__)

STATE_STEM = "train_state"
STATE_FILE = f"{STATE_STEM}.safetensors"  # unsharded; sharded: see vsr.train.state
METRICS_FILE = "metrics.csv"
_COLUMNS = ["step", "loss", "primal", "dual", "adapt", "consistency", "lr", "samples_per_s",
            "tflops", "mfu", "val_psnr", "val_ssim"]
_DEGRADE_STREAM = 2  # step_generator stream of the degradation draws (1: adaptation frames)


@dataclass
class StepReport:
    """What a progress callback receives after each step. ``loss`` is the mean of the last
    logged window (NaN before the first): reading the current step's would wait for the GPU."""

    step: int
    total: int
    loss: float
    samples_per_s: float
    val_psnr: float | None = None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # the step reached (the plan's total unless stopped at the time limit)
    losses: dict[int, float] = field(default_factory=dict)  # step -> global mean loss
    best_psnr: float | None = None
    seconds: float = 0.0
    samples_per_s: float = 0.0
    iterations: int = 0  # the planned total
    stopped: bool = False  # stopped at the time limit, resumable
    interrupted: bool = False  # stopped on request (the ``stop`` event), resumable
    flops_per_sample: int = 0  # model FLOPs of one training sample (forward + backward)
    peak_tflops: float | None = None
    fp16: bool = False  # model-fp16.safetensors written (not when a weight is beyond fp16)


@dataclass
class _Inputs:
    """One step's tensors: the clean pyramid [LR_S, ..., HR], the adaptation frames, the
    degraded LR input, its second observations and their shifts (``--consistency``)."""

    pyramid: list[torch.Tensor]
    lr_real: torch.Tensor | None
    lr_in: torch.Tensor | None
    lr_prev: torch.Tensor | None
    shifts: torch.Tensor | None


class DualRegressionNet(nn.Module):
    """Primal + dual networks behind one forward, so DDP synchronises all of them."""

    def __init__(self, primal: nn.Module, duals: DualNetworks,
                 degradation: nn.Module | None = None, consistency_margin: int = 0) -> None:
        super().__init__()
        self.primal = primal
        self.duals = duals
        self.degradation = degradation  # adaptation through a known kernel, else the duals
        self.consistency_margin = consistency_margin  # LR pixels left out of the consistency

    def forward(self, pyramid: list[torch.Tensor], lr_real: torch.Tensor | None,
                lr_in: torch.Tensor | None = None, lr_prev: torch.Tensor | None = None,
                shifts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(primal, dual, adapt, consistency) loss terms; the primal sees ``lr_in`` (default:
        the clean ``pyramid[0]``) and, when given, ``lr_prev`` in the same pass."""
        x = pyramid[0] if lr_in is None else lr_in
        n = x.shape[0]
        outs = self.primal(x if lr_prev is None else torch.cat([x, lr_prev]))
        lc = None
        if lr_prev is not None:
            scale = outs[-1].shape[-1] // x.shape[-1]
            lc = consistency_loss(outs[-1][:n], outs[-1][n:], shifts, scale,
                                  self.consistency_margin)
            outs = [o[:n] for o in outs]
        lp, ld = primal_loss(outs, pyramid), dual_loss(self.duals, outs, pyramid)
        la = None
        if lr_real is not None:
            outs = self.primal(lr_real)
            la = (cycle_loss(self.duals, outs, lr_real) if self.degradation is None
                  else degradation_loss(self.degradation, outs, lr_real))
        return lp, ld, la, lc


def _canonical(hparams: dict[str, Any]) -> str:
    """Hyperparameters as a checkpoint stores them (JSON: tuples are lists)."""
    return json.dumps(hparams, sort_keys=True)


def network_spec(arch: str, hparams: dict[str, Any]) -> ModelSpec:
    """What a run trains: the registry model ``arch`` (``hparams`` override its constructor
    arguments), or, for an architecture family such as ``drn``, the network ``hparams``
    describe in full (a checkpoint's own: ``vsr train --init FILE`` without ``--arch``).

    Raises:
        ConfigError: a family without hparams, or hparams its constructor does not take.
        ModelError: an unknown name.
    """
    if arch in REGISTRY or arch not in ARCHITECTURES:
        return REGISTRY.get(arch)
    if not hparams:
        raise ConfigError(f"{arch!r} is an architecture family: name a registry model, or train "
                          f"a checkpoint's own network with --init FILE and no --arch")
    try:
        scale = int(ARCHITECTURES[arch](**hparams).scale)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"hparams do not fit {arch!r} ({exc})") from None
    return ModelSpec(name=arch, arch=arch, kwargs=hparams, scale=scale,
                     description="the network of a checkpoint's hparams")


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(step, total) / total))


def _training_device(spec: str, rank: int) -> torch.device:
    """The --device of a run; a bare ``cuda`` under DDP means this rank's own GPU."""
    device = resolve_device(spec, require_available=True)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return device


class Trainer:
    """One training run. Construct, then :meth:`run`. Rank 0 writes the run folder.

    On a GPU the training images live on the device and each batch (crops, flips, the LR
    pyramid) is made there; the loop never waits for the GPU between log points (losses stay on
    the device until then). With ``config.time_limit`` the run stops between two steps once that
    many minutes have passed since construction, saving a state that ``resume`` continues
    exactly: the learning rate follows the schedule of the whole plan (``iterations``).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.t_start = time.perf_counter()  # the time limit counts start-up too
        self.config = config
        self.run_dir = Path(config.out)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if config.batch_size % self.world:
            raise ConfigError(f"batch size {config.batch_size} does not split over "
                              f"{self.world} processes")
        if config.threads:  # asked for by the run (each spawned rank is a process of its own)
            configure_runtime(threads=config.threads, omp_wait_policy=None,
                              keep_freed_memory=False)
        self.device = _training_device(config.device, self.rank)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self.spec = network_spec(config.arch, config.model_overrides)
        self.scale = self.spec.scale
        if config.val_data:  # every rank: one failing alone would leave the others waiting
            from vsr.evaluate import check_benchmark

            check_benchmark(config.val_data, self.scale)
        self.chain = None
        if config.degrade is not None:
            from vsr.degradations import DegradationChain  # lazy: it needs PyAV

            self.chain = DegradationChain.parse(config.degrade)
        torch.manual_seed(config.seed)
        self.primal = self.spec.build(**config.model_overrides).to(self.device)
        width = config.dual_width or int(self.primal.hparams.get("n_feats", 16))
        self.duals = DualNetworks(phase=self.primal.phase, width=width).to(self.device)
        if config.init and not resume:  # a resume loads its state's weights over them
            tensors, info = load_tensors(config.init)
            check_finite_weights(tensors.items(), config.init)  # else it diverges at step 1
            if config.arch in REGISTRY and info.arch == self.spec.arch \
                    and _canonical(info.hparams) != _canonical(self.primal.hparams):
                raise ConfigError(f"{config.init} holds another {info.arch} than {config.arch} "
                                  f"(hparams {info.hparams}); leave out --arch to train the "
                                  f"network it holds")
            load_state_into(self.primal, tensors, config.init)
            if any(k.startswith("dual.") for k in tensors):  # a training state: its duals too
                load_state_into(self.duals, tensors, config.init, prefix="dual.", ignore=())
        if cuda:
            self.primal.to(memory_format=torch.channels_last)
            self.duals.to(memory_format=torch.channels_last)
        # fused: one kernel per parameter group instead of several per tensor (CUDA only)
        adam = dict(lr=config.lr, betas=(0.9, 0.999), fused=True if cuda else None)
        self.optimizers = {"primal": torch.optim.Adam(self.primal.parameters(), **adam)}
        for i, d in enumerate(self.duals):
            self.optimizers[f"dual{i}"] = torch.optim.Adam(d.parameters(), **adam)
        self.amp_dtype = self._amp_dtype()
        # before any step: one far too large was killed by the kernel with no error line
        check_step_memory(self.primal, self.duals, patch=config.patch,
                          batch=config.batch_size // self.world, device=self.device,
                          value_bytes=4 if self.amp_dtype is None else 2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.adapt = (LRSampler(config.adapt, config.patch, config.adapt_frames)
                      if config.adapt else None)
        self.adapt_sigma = self._adapt_sigma()
        degradation = (GaussianDegradation(self.adapt_sigma, self.scale).to(self.device)
                       if self.adapt_sigma is not None else None)
        self.net: nn.Module = DualRegressionNet(self.primal, self.duals, degradation,
                                                consistency_margin(config))
        if self.distributed:
            ids = [self.device.index] if cuda else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.forward = torch.compile(self.net) if config.compile else self.net
        self.start_step = 0
        self.best_psnr: float | None = None
        self.saved_step: int | None = None  # the step of the last state saved (finite weights)
        if resume:
            state = load_training_state(state_paths(self.run_dir, STATE_STEM), self.primal,
                                        self.duals, self.optimizers)
            self.start_step = self.saved_step = int(state["step"])
            self.best_psnr = state.get("best_psnr")
            restore_rng_state(state.get("rng", {}), self.device)
            if self.rank == 0:  # what a save interrupted last time left (never the state)
                for path in remove_stale_state(self.run_dir, STATE_STEM):
                    log.info("removed %s, left by an interrupted save", path.name)
        self.sampler = PatchSampler(config.data, config.patch * self.scale)
        if self.chain is None:
            self.sampler.to(self.device)  # degraded batches are made from CPU crops instead
        self.flops_per_sample = train_flops_per_sample(
            self.primal, self.duals, config.patch, primal_passes=2 if config.consistency else 1)
        self.peak_tflops = peak_tflops(self.device, config.peak_tflops)

    def _adapt_sigma(self) -> float | None:
        """The Gaussian of the adaptation loss (None: through the learned duals)."""
        if self.adapt is None:
            return None
        spec = DegradationSpec.parse(self.config.adapt_degradation)
        if spec.kind == "dual":
            return None
        if spec.kind == "gaussian":
            return spec.sigma
        sigma = estimate_gaussian_sigma(self.adapt.frames, self.scale)
        log.info("adaptation frames: estimated Gaussian blur sigma %.2f (HR pixels)", sigma)
        return sigma

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def _info(self, extra: dict[str, Any] | None = None) -> CheckpointInfo:
        prov = {"tool": "vsr train", "arch": self.config.arch, "data": list(self.config.data),
                "adapt": list(self.config.adapt), "dual_lambda": self.config.dual_lambda,
                "lr": self.config.lr, "lr_min": self.config.lr_min,
                "batch_size": self.config.batch_size, "patch": self.config.patch,
                "adapt_degradation": (self.config.adapt_degradation if self.adapt_sigma is None
                                      else f"gaussian:{self.adapt_sigma:g}"),
                "degrade": str(self.chain) if self.chain is not None else None,
                "consistency": self.config.consistency,
                "planned_iterations": self.config.iterations,
                "seed": self.config.seed, "device": str(self.device), "world_size": self.world}
        prov.update(extra or {})
        return CheckpointInfo(arch=self.spec.arch, hparams=self.primal.hparams, scale=self.scale,
                              name=self.config.arch, provenance=prov)

    def _rows(self) -> slice:
        share = self.config.batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def _degraded_batches(self, first: int) -> DegradedBatches | None:
        if self.chain is None:
            return None
        cfg = self.config
        # under DDP each rank draws its own share's degradations (its own stream)
        return DegradedBatches(self.sampler, self.chain, self.scale, seed=cfg.seed,
                               batch=cfg.batch_size, rows=self._rows(),
                               stream=rank_stream(_DEGRADE_STREAM, self.rank), first=first,
                               last=cfg.iterations, workers=cfg.degrade_workers,
                               pin=self.device.type == "cuda", pairs=cfg.consistency > 0)

    def _batch(self, step: int, degraded: DegradedBatches | None) -> _Inputs:
        """This rank's share of the global batch of ``step`` (same samples for any world)."""
        cfg = self.config
        lr_in = lr_prev = shifts = None
        if degraded is not None:
            batch = degraded.get(step)
            hr8 = batch.hr.to(self.device, non_blocking=True)
            lr_in = batch.lr.to(self.device, non_blocking=True).float() / 255.0
            if batch.prev is not None:
                lr_prev = batch.prev.to(self.device, non_blocking=True).float() / 255.0
                shifts = batch.shifts
        else:
            hr8 = self.sampler.crops(cfg.batch_size, step_generator(cfg.seed, step),
                                      self._rows())
        pyramid = lr_pyramid(hr8.float() / 255.0, self.scale)
        if degraded is not None and batch.clean is not None:
            pyramid[0] = batch.clean.to(self.device, non_blocking=True).float() / 255.0
        lr_real = None
        if self.adapt is not None:
            n = cfg.adapt_batch
            ashare = max(1, n // self.world)
            real = self.adapt.sample(n, step_generator(cfg.seed, step, stream=1))
            lr_real = real[self.rank * ashare:(self.rank + 1) * ashare].to(self.device)
        if self.device.type == "cuda":
            pyramid = [p.contiguous(memory_format=torch.channels_last) for p in pyramid]
            if lr_in is not None:
                lr_in = lr_in.contiguous(memory_format=torch.channels_last)
            if lr_prev is not None:
                lr_prev = lr_prev.contiguous(memory_format=torch.channels_last)
        return _Inputs(pyramid, lr_real, lr_in, lr_prev, shifts)

    def _step(self, step: int, degraded: DegradedBatches | None) -> torch.Tensor:
        """One optimisation step; returns its (loss, primal, dual, adapt, consistency) on the
        device, without waiting for it."""
        cfg = self.config
        lr = cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_min)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        b = self._batch(step, degraded)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            lp, ld, la, lc = self.forward(b.pyramid, b.lr_real, b.lr_in, b.lr_prev, b.shifts)
            loss = lp + cfg.dual_lambda * ld
            if la is not None:
                loss = loss + cfg.adapt_weight * la
            if lc is not None:
                loss = loss + cfg.consistency * lc
        self.scaler.scale(loss).backward()
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        zero = loss.new_zeros(())
        return torch.stack([t.detach().float() if t is not None else zero
                            for t in (loss, lp, ld, la, lc)])

    def _flush(self, window: list[torch.Tensor], last_step: int,
               result: TrainResult) -> dict[str, float]:
        """Bring the window's per-step terms to the host (the one wait for the device), record
        each step's loss and return the window's means."""
        terms = torch.stack(window)
        if self.distributed:
            dist.all_reduce(terms)
            terms /= self.world
        rows = terms.tolist()
        first = last_step - len(rows) + 1
        for i, r in enumerate(rows):
            result.losses[first + i] = r[0]
        means = [math.fsum(col) / len(rows) for col in zip(*rows, strict=True)]
        return dict(zip(("loss", "primal", "dual", "adapt", "consistency"), means, strict=True))

    def _stop_now(self, log_point: bool, requested: threading.Event | None) -> str | None:
        """Why the run stops after this step: "time" (the limit has passed), "request"
        (``requested`` is set), or None. Under DDP all ranks must stop at the same step: they
        decide together, at log points (a request seen by one rank stops them all)."""
        limit = self.config.time_limit
        late = limit is not None and time.perf_counter() - self.t_start >= limit * 60.0
        asked = requested is not None and requested.is_set()
        if self.distributed:
            if not log_point:
                return None
            flags = torch.tensor([float(late), float(asked)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            late, asked = bool(flags[0].item()), bool(flags[1].item())
        return "request" if asked else "time" if late else None

    def validate(self) -> tuple[float, float] | None:
        if not self.config.val_data:
            return None
        from vsr.evaluate import evaluate_dataset

        handle = NetworkUpscaler(self.config.arch, self.primal, device=self.device)
        try:
            res = evaluate_dataset(handle, self.config.val_data, self.scale)
        finally:
            self.primal.train()
        return res.psnr, res.ssim

    def run(self, progress: Callable[[StepReport], None] | None = None, *,
            stop: threading.Event | None = None) -> TrainResult:
        """Train to the planned step; with ``stop`` set (e.g. by a signal handler) or the time
        limit passed, stop after the current step with a resumable state, as
        :attr:`TrainResult.interrupted` or :attr:`TrainResult.stopped` say."""
        cfg = self.config
        result = TrainResult(self.run_dir, self.start_step, best_psnr=self.best_psnr,
                             iterations=cfg.iterations, flops_per_sample=self.flops_per_sample,
                             peak_tflops=self.peak_tflops)
        if self.rank == 0:
            with self._writing(CONFIG_FILE):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                for path in _leftovers(self.run_dir):
                    path.unlink(missing_ok=True)
                    log.info("removed %s, left by an interrupted write", path.name)
                # whole or not at all: a resume on a full disk cut it in place, and the run
                # the error said it kept could no longer be resumed
                store_file(self.run_dir / CONFIG_FILE, cfg.to_json().encode())
                _trim_metrics(self.run_dir / METRICS_FILE, self.start_step)
        self.primal.train()
        degraded = self._degraded_batches(self.start_step)
        try:
            if degraded is not None:
                degraded.start()
            self._loop(result, degraded, progress, stop)
        finally:
            if degraded is not None:
                degraded.close()
        if self.rank == 0:
            self._save_inference("last.safetensors", result.steps, None)
            src = "best.safetensors" if (self.run_dir / "best.safetensors").exists() \
                else "last.safetensors"
            from vsr.train.plot import plot_metrics

            with self._writing("model-fp16.safetensors and metrics.png"):
                result.fp16 = _export_fp16(self.run_dir / src,
                                           self.run_dir / "model-fp16.safetensors")
                plot_metrics(self.run_dir / METRICS_FILE, self.run_dir / "metrics.png")
        return result

    def _loop(self, result: TrainResult, degraded: DegradedBatches | None,
              progress: Callable[[StepReport], None] | None,
              requested: threading.Event | None) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        window: list[torch.Tensor] = []
        window_t = t0
        last_loss = math.nan
        done = checked = self.start_step
        for step in range(self.start_step, cfg.iterations):
            window.append(self._step(step, degraded))
            done = step + 1
            log_point = (done % cfg.log_every == 0 or done % cfg.val_every == 0
                         or done == cfg.iterations)
            why = self._stop_now(log_point, requested) if done < cfg.iterations else None
            stop = why is not None
            row: dict[str, Any] | None = None
            rate = 0.0
            if log_point or stop:
                m = self._flush(window, done, result)
                now = time.perf_counter()
                rate = len(window) * cfg.batch_size / max(now - window_t, 1e-9)
                window, window_t, last_loss = [], now, m["loss"]
                tflops = rate * self.flops_per_sample / 1e12
                row = {"step": done, **m, "samples_per_s": rate, "tflops": tflops,
                       "mfu": tflops / self.peak_tflops if self.peak_tflops else None,
                       "lr": cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_min)}
            save = done % cfg.save_every == 0 or done == cfg.iterations or stop
            if log_point or save:  # host syncs already: the losses are here, or a save waits
                self._check_finite(done, result, window, checked)
                checked = done
            val = None
            if done % cfg.val_every == 0 or done == cfg.iterations:
                val = self._validate_or_keep(done) if self.rank == 0 else None
                if val is not None:
                    row = {**(row or {"step": done}), "val_psnr": val[0], "val_ssim": val[1]}
                    if self.best_psnr is None or val[0] > self.best_psnr:
                        self.best_psnr = val[0]
                        self._save_inference("best.safetensors", done, val)
            if val is not None:  # validation time is not training throughput
                window_t = time.perf_counter()
            if self.rank == 0 and row is not None:
                with self._writing(METRICS_FILE):
                    _append_metrics(self.run_dir / METRICS_FILE, row)
            if save:
                self._save_state(done)
            if progress is not None and self.rank == 0:
                progress(StepReport(done, cfg.iterations, last_loss, rate,
                                    val[0] if val else None))
            if why == "time":
                log.info("time limit of %g min reached at step %d of %d; state saved",
                         cfg.time_limit, done, cfg.iterations)
                result.stopped = True
            elif why == "request":
                log.info("stopped at step %d of %d as asked; state saved", done, cfg.iterations)
                result.interrupted = True
            if stop:
                break
        result.steps = done
        result.seconds = time.perf_counter() - t0
        ran = done - self.start_step
        result.samples_per_s = ran * cfg.batch_size / max(result.seconds, 1e-9)
        result.best_psnr = self.best_psnr

    def _check_finite(self, done: int, result: TrainResult, window: list[torch.Tensor],
                      checked: int) -> None:
        """Raise TrainingDiverged if a loss recorded since step ``checked`` or a weight is not
        finite, before anything is validated or saved. Called at log and save points only:
        the weights' check is one more wait for the device there. Under DDP every rank
        decides alike (the recorded losses are all-reduced, the weights are the same)."""
        bad = next(((s, result.losses[s]) for s in range(checked + 1, done + 1)
                    if s in result.losses and not math.isfinite(result.losses[s])), None)
        if bad is None:
            params = [*self.primal.parameters(), *self.duals.parameters()]
            if bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                return
            # weights gone before a logged loss shows it: the window holds this rank's losses
            first = done - len(window) + 1
            pending = torch.stack(window)[:, 0].tolist() if window else []
            bad = next(((first + i, v) for i, v in enumerate(pending) if not math.isfinite(v)),
                       (done, None))
        step, loss = bad
        what = (f"the loss became {loss}" if loss is not None
                else "the weights became non-finite")
        kept = (f", {self.run_dir} keeps the state of step {self.saved_step}"
                if self.saved_step is not None else "")
        raise TrainingDiverged(f"training diverged at step {step} of {self.config.iterations}: "
                               f"{what} (lr {self.config.lr:g}: try a lower --lr); no weights "
                               f"were written{kept}")

    def _validate_or_keep(self, step: int) -> tuple[float, float] | None:
        """:meth:`validate`; if the validation images broke since the start (one replaced by a
        damaged file, or removed), the state of ``step`` is saved before the InputError goes
        on (it ended the run with the steps since the last save lost). Rank 0 only."""
        try:
            return self.validate()
        except InputError as exc:
            if self.saved_step != step:
                self._write_state(step)  # no barrier: the other ranks are not saving
                self.saved_step = step
            raise InputError(f"{exc}; {self.run_dir} keeps the state of step {step}: fix the "
                             f"validation images, then continue with vsr train --resume "
                             f"{self.run_dir}") from None

    def _save_state(self, step: int) -> None:
        if self.rank == 0:
            self._write_state(step)
        if self.distributed:
            dist.barrier()
        self.saved_step = step

    def _write_state(self, step: int) -> None:
        cfg = self.config
        shard = int(cfg.state_shard_mib * 2**20) if cfg.state_shard_mib is not None else None
        extra = {"best_psnr": self.best_psnr, "seed": cfg.seed,
                 "schedule": {"kind": "cosine", "lr": cfg.lr, "lr_min": cfg.lr_min,
                              "total": cfg.iterations},
                 "rng": rng_state(self.device), "config": json.loads(cfg.to_json())}
        with self._writing(f"the state of step {step}"):
            save_training_state(self.run_dir, STATE_STEM, self.primal, self.duals,
                                self.optimizers, step, self._info({"iterations": step}),
                                extra, moments=cfg.state_moments, shard_bytes=shard)

    def _save_inference(self, name: str, step: int, val: tuple[float, float] | None) -> None:
        extra: dict[str, Any] = {"iterations": step}
        if val is not None:
            extra["val"] = {"data": self.config.val_data, "psnr": val[0], "ssim": val[1]}
        with self._writing(name):
            save_model(self.run_dir / name, self.primal, self._info(extra))

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write in the run folder (a full disk, a read-only folder) into one
        OutputError that says which state the folder still holds (saves are all or nothing)."""
        try:
            yield
        except (OSError, SafetensorError, OutputError) as exc:
            if (why := write_failure(exc)) is None:
                raise
            kept = (f"; it keeps the state of step {self.saved_step}"
                    if self.saved_step is not None else "")
            raise OutputError(f"{self.run_dir}: cannot write {what} ({write_reason(why)})"
                              f"{kept}") from None


_FP16_MAX = 65504.0  # the largest finite float16


def _export_fp16(src: Path, dst: Path) -> bool:
    """The shipping form of a checkpoint: the same file with fp16 tensors. A weight beyond
    fp16's range would be written as infinity (a file no loader takes): then no fp16 file is
    written (one of an earlier slot is removed), a warning says why, and False is returned."""
    from vsr.models import load_network

    model, info = load_network(src)
    for name, t in model.state_dict().items():
        if t.is_floating_point() and t.numel():
            peak = float(t.detach().abs().max())
            if peak > _FP16_MAX:
                dst.unlink(missing_ok=True)
                log.warning("%s not written: %s holds a weight of magnitude %.4g, beyond "
                            "float16's %g; use %s (float32)", dst.name, name, peak, _FP16_MAX,
                            src.name)
                return False
    save_model(dst, model, info, dtype=torch.float16)
    return True


_WHOLE_FILES = ("last.safetensors", "best.safetensors", "model-fp16.safetensors")


def _leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of writes a killed run left in its folder (the state's own go with
    :func:`vsr.train.state.remove_stale_state`): without this they stayed for good, each as
    large as the model."""
    found = [p for name in (*_WHOLE_FILES, CONFIG_FILE, METRICS_FILE, "metrics.png")
             for p in stale_partials(run_dir / name)]
    # the names versions before vsr.io.output.store_file wrote through
    found += [p for name in _WHOLE_FILES for p in run_dir.glob(f".{name}.*.tmp")]
    found += [run_dir / n for n in ("metrics.tmp", "metrics.tmp.png")]
    return [p for p in found if p.is_file()]


def _trim_metrics(path: Path, keep_upto: int) -> None:
    """On resume, drop rows past the resumed step so the CSV stays one continuous run. Rows
    that do not parse go too (a crash or a full disk can leave a cut line or NUL bytes: the
    resume, and the plot at the end, failed on them with an internal error)."""
    if not path.exists():
        return
    rows, bad = [], 0
    with path.open(newline="", errors="replace") as fh:
        for raw in csv.DictReader(fh):
            row = _metrics_row(raw)
            if row is None:
                bad += 1
            elif int(row["step"]) <= keep_upto:
                rows.append(row)
    if bad:
        log.warning("%s: left out %d unreadable row(s)", path, bad)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    store_file(path, text.getvalue().encode())  # a full disk: the old file is kept whole


def _metrics_row(raw: dict[str | None, Any]) -> dict[str, str] | None:
    """The known columns of a metrics.csv row as written (an integer step, numbers or
    nothing), or None."""
    if None in raw:  # more fields than the header: a garbled line
        return None
    row = {k: v for k, v in raw.items() if k in _COLUMNS and v is not None}
    try:
        int(row.get("step") or "")
        for value in row.values():
            if value:
                float(value)
    except ValueError:
        return None
    return row


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def summary(result: TrainResult) -> dict[str, Any]:
    """The ``vsr train --json`` object. ``steps`` is the step reached, ``iterations`` the plan;
    ``mfu``: model FLOPs per second over the peak (None without a known peak). A number that
    is not finite (a loss of NaN, a PSNR of infinity) is None: the object is strict JSON."""
    tflops = result.samples_per_s * result.flops_per_sample / 1e12
    out = {"run_dir": str(result.run_dir), "steps": result.steps,
           "iterations": result.iterations, "stopped_at_time_limit": result.stopped,
           "interrupted": result.interrupted,
           "final_loss": result.losses.get(result.steps), "best_val_psnr": result.best_psnr,
           "seconds": round(result.seconds, 2), "samples_per_s": round(result.samples_per_s, 2),
           "flops_per_sample": result.flops_per_sample, "tflops": round(tflops, 3),
           "peak_tflops": result.peak_tflops, "fp16_model": result.fp16,
           "mfu": round(tflops / result.peak_tflops, 4) if result.peak_tflops else None}
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in out.items()}


__all__ = ["DualRegressionNet", "StepReport", "TrainResult", "Trainer", "cosine_lr", "peak_tflops",
           "summary", "train_flops_per_sample"]
