"""`vsr train`: dual regression training of a registry architecture."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vsr.cli.common import device_option, emit_json, json_option


@click.command("train")
@click.option("--arch", help="Registry architecture to train, e.g. drn-s-x4.")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="HR image folder (repeatable).")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run folder.")
@click.option("--iterations", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Global batch (split over processes).")
@click.option("--patch", type=click.IntRange(min=8), default=32, show_default=True,
              help="LR patch side; HR patches are patch x scale.")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--lr-min", type=float, default=1e-7, show_default=True)
@click.option("--dual-lambda", type=float, default=0.1, show_default=True,
              help="Weight of the dual loss (0 turns dual regression off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Benchmark folder for periodic validation PSNR.")
@click.option("--val-every", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--save-every", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True)
@device_option
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default="auto",
              show_default=True, help="Mixed precision (auto: bf16 on CUDA, none on CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per process.")
@click.option("--adapt", multiple=True, type=click.Path(exists=True),
              help="Real LR video or image folder for unpaired adaptation (repeatable).")
@click.option("--adapt-weight", type=float, default=1.0, show_default=True)
@click.option("--adapt-batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--adapt-degradation", default="auto", show_default=True,
              help="How the --adapt frames were degraded: auto (a Gaussian blur estimated from "
                   "the frames), gaussian:SIGMA (in HR pixels), or dual (the learned duals).")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from this checkpoint's weights.")
@click.option("--resume", "resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the run in this folder exactly where it stopped.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (DDP; gloo on CPU, nccl on CUDA).")
@json_option
def train(arch, data, out, iterations, batch_size, patch, lr, lr_min, dual_lambda, seed,
          val_data, val_every, save_every, log_every, device, amp, threads, adapt,
          adapt_weight, adapt_batch, adapt_degradation, init, resume, nproc, as_json) -> None:
    """Train a DRN with dual regression on HR images (and optionally adapt to real LR video).

    With --resume RUN_DIR the saved config.json of that run is used as it was.
    """
    from vsr.train import TrainConfig
    from vsr.train import train as run_train
    from vsr.train.trainer import CONFIG_FILE, summary

    if resume:
        config = TrainConfig.load(Path(resume) / CONFIG_FILE)
    else:
        if not arch or not data or not out:
            raise click.UsageError("--arch, --data and --out are required (or --resume RUN_DIR)")
        config = TrainConfig(arch=arch, data=data, out=out, iterations=iterations,
                             batch_size=batch_size, patch=patch, lr=lr, lr_min=lr_min,
                             dual_lambda=dual_lambda, seed=seed, val_data=val_data,
                             val_every=val_every, save_every=save_every, log_every=log_every,
                             device=device, amp=amp, threads=threads, adapt=adapt,
                             adapt_weight=adapt_weight, adapt_batch=adapt_batch,
                             adapt_degradation=adapt_degradation, init=init)
    bar = _Progress(config.iterations) if sys.stderr.isatty() or not as_json else None
    result = run_train(config, resume=resume is not None, nproc=nproc,
                       progress=bar.update if bar else None)
    if bar:
        bar.close()
    if as_json:
        emit_json(summary(result))
    else:
        s = summary(result)
        click.echo(f"trained {config.arch} for {s['steps']} iterations in {s['seconds']} s "
                   f"({s['samples_per_s']} samples/s); best val PSNR {s['best_val_psnr']}; "
                   f"run folder {s['run_dir']}")


class _Progress:
    """A one-line progress report on stderr: step, loss, samples/s, ETA."""

    def __init__(self, total: int) -> None:
        import time

        self.total = total
        self.t0 = time.perf_counter()
        self.first: int | None = None
        self.last = 0.0
        self.val = ""

    def update(self, rep) -> None:
        import time

        now = time.perf_counter()
        if self.first is None:
            self.first, self.t0 = rep.step - 1, now
        if rep.val_psnr is not None:
            self.val = f" val {rep.val_psnr:.2f} dB"
        if now - self.last < 1.0 and rep.step != rep.total:
            return
        self.last = now
        done = rep.step - self.first
        rate = done / max(now - self.t0, 1e-9)
        eta = (rep.total - rep.step) / rate if rate > 0 else 0
        click.echo(f"\r[{rep.step}/{rep.total}] loss {rep.loss:.4f}{self.val} "
                   f"{rate:.2f} it/s ETA {int(eta // 60)}m{int(eta % 60):02d}s   ",
                   err=True, nl=False)

    def close(self) -> None:
        click.echo("", err=True)
