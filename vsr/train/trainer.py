"""The training loop: dual regression learning of a DRN, single process or DDP."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vsr.device import resolve_device
from vsr.errors import ConfigError
from vsr.models import REGISTRY, CheckpointInfo, DualNetworks, NetworkUpscaler, save_model
from vsr.models.checkpoint import load_state_into, load_tensors
from vsr.train.config import TrainConfig
from vsr.train.data import LRSampler, PatchSampler, lr_pyramid, step_generator
from vsr.train.degrade import DegradationSpec, GaussianDegradation, estimate_gaussian_sigma
from vsr.train.losses import cycle_loss, degradation_loss, dual_regression_loss
from vsr.train.state import load_training_state, save_training_state

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.json"
_COLUMNS = ["step", "loss", "primal", "dual", "adapt", "lr", "samples_per_s", "val_psnr",
            "val_ssim"]


@dataclass
class StepReport:
    """What a progress callback receives after each step."""

    step: int
    total: int
    loss: float
    samples_per_s: float
    val_psnr: float | None = None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> global mean loss
    best_psnr: float | None = None
    seconds: float = 0.0
    samples_per_s: float = 0.0


class DualRegressionNet(nn.Module):
    """Primal + dual networks behind one forward, so DDP synchronises all of them."""

    def __init__(self, primal: nn.Module, duals: DualNetworks,
                 degradation: nn.Module | None = None) -> None:
        super().__init__()
        self.primal = primal
        self.duals = duals
        self.degradation = degradation  # adaptation through a known kernel, else the duals

    def forward(self, pyramid: list[torch.Tensor], lr_real: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        terms = dual_regression_loss(self.primal, self.duals, pyramid, dual_lambda=0.0)
        la = None
        if lr_real is not None:
            outs = self.primal(lr_real)
            la = (cycle_loss(self.duals, outs, lr_real) if self.degradation is None
                  else degradation_loss(self.degradation, outs, lr_real))
        return terms.primal, terms.dual, la


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(step, total) / total))


def _training_device(spec: str, rank: int) -> torch.device:
    """The --device of a run; a bare ``cuda`` under DDP means this rank's own GPU."""
    device = resolve_device(spec, require_available=True)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return device


class Trainer:
    """One training run. Construct, then :meth:`run`. Rank 0 writes the run folder."""

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        self.config = config
        self.run_dir = Path(config.out)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if config.batch_size % self.world:
            raise ConfigError(f"batch size {config.batch_size} does not split over "
                              f"{self.world} processes")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = _training_device(config.device, self.rank)
        self.spec = REGISTRY.get(config.arch)
        self.scale = self.spec.scale
        torch.manual_seed(config.seed)
        self.primal = self.spec.build(**config.model_overrides).to(self.device)
        width = config.dual_width or int(self.primal.hparams.get("n_feats", 16))
        self.duals = DualNetworks(phase=self.primal.phase, width=width).to(self.device)
        if config.init:
            tensors, _ = load_tensors(config.init)
            load_state_into(self.primal, tensors, config.init)
            if any(k.startswith("dual.") for k in tensors):  # a training state: its duals too
                load_state_into(self.duals, tensors, config.init, prefix="dual.", ignore=())
        self.optimizers = {"primal": torch.optim.Adam(self.primal.parameters(), lr=config.lr,
                                                      betas=(0.9, 0.999))}
        for i, d in enumerate(self.duals):
            self.optimizers[f"dual{i}"] = torch.optim.Adam(d.parameters(), lr=config.lr,
                                                           betas=(0.9, 0.999))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.device.type == "cuda":
            self.primal.to(memory_format=torch.channels_last)
        self.adapt = (LRSampler(config.adapt, config.patch, config.adapt_frames)
                      if config.adapt else None)
        self.adapt_sigma = self._adapt_sigma()
        degradation = (GaussianDegradation(self.adapt_sigma, self.scale).to(self.device)
                       if self.adapt_sigma is not None else None)
        self.net: nn.Module = DualRegressionNet(self.primal, self.duals, degradation)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.start_step = 0
        self.best_psnr: float | None = None
        if resume:
            state = load_training_state(self.run_dir / STATE_FILE, self.primal, self.duals,
                                        self.optimizers)
            self.start_step = int(state["step"])
            self.best_psnr = state.get("best_psnr")
        self.sampler = PatchSampler(config.data, config.patch * self.scale)

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
                "seed": self.config.seed, "device": str(self.device), "world_size": self.world}
        prov.update(extra or {})
        return CheckpointInfo(arch=self.spec.arch, hparams=self.primal.hparams, scale=self.scale,
                              name=self.config.arch, provenance=prov)

    def _batch(self, step: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """This rank's share of the global batch of ``step`` (same samples for any world)."""
        cfg = self.config
        share = cfg.batch_size // self.world
        lo = self.rank * share
        hr = self.sampler.sample(cfg.batch_size, step_generator(cfg.seed, step))[lo:lo + share]
        pyramid = lr_pyramid(hr.to(self.device, non_blocking=True), self.scale)
        lr_real = None
        if self.adapt is not None:
            n = cfg.adapt_batch
            ashare = max(1, n // self.world)
            real = self.adapt.sample(n, step_generator(cfg.seed, step, stream=1))
            lr_real = real[self.rank * ashare:(self.rank + 1) * ashare].to(self.device)
        if self.device.type == "cuda":
            pyramid = [p.contiguous(memory_format=torch.channels_last) for p in pyramid]
        return pyramid, lr_real

    def _step(self, step: int) -> dict[str, float]:
        cfg = self.config
        lr = cosine_lr(step, cfg.iterations, cfg.lr, cfg.lr_min)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
        pyramid, lr_real = self._batch(step)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            lp, ld, la = self.net(pyramid, lr_real)
            loss = lp + cfg.dual_lambda * ld
            if la is not None:
                loss = loss + cfg.adapt_weight * la
        self.scaler.scale(loss).backward()
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        terms = torch.stack([loss.detach().float(), lp.detach().float(), ld.detach().float(),
                             (la.detach().float() if la is not None else loss.new_zeros(()))])
        if self.distributed:
            dist.all_reduce(terms)
            terms /= self.world
        t = terms.tolist()
        return {"loss": t[0], "primal": t[1], "dual": t[2], "adapt": t[3], "lr": lr}

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

    def run(self, progress: Callable[[StepReport], None] | None = None) -> TrainResult:
        cfg = self.config
        result = TrainResult(self.run_dir, cfg.iterations, best_psnr=self.best_psnr)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(cfg.to_json())
            _trim_metrics(self.run_dir / METRICS_FILE, self.start_step)
        self.primal.train()
        t0 = time.perf_counter()
        window_t, window_n = time.perf_counter(), 0
        for step in range(self.start_step, cfg.iterations):
            m = self._step(step)
            done = step + 1
            result.losses[done] = m["loss"]
            window_n += cfg.batch_size
            row: dict[str, Any] | None = None
            if done % cfg.log_every == 0 or done == cfg.iterations:
                now = time.perf_counter()
                m["samples_per_s"] = window_n / max(now - window_t, 1e-9)
                window_t, window_n = now, 0
                row = {"step": done, **m}
            val = None
            if done % cfg.val_every == 0 or done == cfg.iterations:
                val = self.validate() if self.rank == 0 else None
                if val is not None:
                    row = {"step": done, **m, **(row or {}), "val_psnr": val[0],
                           "val_ssim": val[1]}
                    if self.best_psnr is None or val[0] > self.best_psnr:
                        self.best_psnr = val[0]
                        self._save_inference("best.safetensors", done, val)
            if val is not None:  # validation time is not training throughput
                window_t = time.perf_counter()
            if self.rank == 0 and row is not None:
                _append_metrics(self.run_dir / METRICS_FILE, row)
            if done % cfg.save_every == 0 or done == cfg.iterations:
                self._save_state(done)
            if progress is not None and self.rank == 0:
                progress(StepReport(done, cfg.iterations, m["loss"],
                                    m.get("samples_per_s", 0.0), val[0] if val else None))
        result.seconds = time.perf_counter() - t0
        ran = cfg.iterations - self.start_step
        result.samples_per_s = ran * cfg.batch_size / max(result.seconds, 1e-9)
        result.best_psnr = self.best_psnr
        if self.rank == 0:
            self._save_inference("last.safetensors", cfg.iterations, None)
            src = "best.safetensors" if (self.run_dir / "best.safetensors").exists() \
                else "last.safetensors"
            _export_fp16(self.run_dir / src, self.run_dir / "model-fp16.safetensors")
            from vsr.train.plot import plot_metrics

            plot_metrics(self.run_dir / METRICS_FILE, self.run_dir / "metrics.png")
        return result

    def _save_state(self, step: int) -> None:
        if self.rank == 0:
            save_training_state(self.run_dir / STATE_FILE, self.primal, self.duals,
                                self.optimizers, step, self._info({"iterations": step}),
                                {"best_psnr": self.best_psnr})
        if self.distributed:
            dist.barrier()

    def _save_inference(self, name: str, step: int, val: tuple[float, float] | None) -> None:
        extra: dict[str, Any] = {"iterations": step}
        if val is not None:
            extra["val"] = {"data": self.config.val_data, "psnr": val[0], "ssim": val[1]}
        save_model(self.run_dir / name, self.primal, self._info(extra))


def _export_fp16(src: Path, dst: Path) -> None:
    """The shipping form of a checkpoint: the same file with fp16 tensors."""
    from vsr.models import load_network

    model, info = load_network(src)
    save_model(dst, model, info, dtype=torch.float16)


def _trim_metrics(path: Path, keep_upto: int) -> None:
    """On resume, drop rows past the resumed step so the CSV stays one continuous run."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_upto]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def summary(result: TrainResult) -> dict[str, Any]:
    return {"run_dir": str(result.run_dir), "steps": result.steps,
            "final_loss": result.losses.get(result.steps), "best_val_psnr": result.best_psnr,
            "seconds": round(result.seconds, 2), "samples_per_s": round(result.samples_per_s, 2)}


__all__ = ["DualRegressionNet", "StepReport", "TrainResult", "Trainer", "cosine_lr", "summary"]
