"""`vsr train`: dual regression training of a registry architecture."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from contextlib import nullcontext

import click

from vsr.cli.common import device_option, emit_json, json_option
from vsr.cli.main import Stopped, stop_signals_request
from vsr.errors import Interrupted


@click.command("train")
@click.option("--arch", help="Registry architecture to train, e.g. drn-s-x4. Leave it out with "
                             "--init to train the checkpoint's own network (e.g. one grown or "
                             "pruned off the registry).")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True),
              help="HR image folder or image pack (.npz, see benchmarks/train_slot.py; "
                   "repeatable).")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run folder.")
@click.option("--iterations", "--iters", "iterations", type=click.IntRange(min=1), default=10_000,
              show_default=True,
              help="The whole plan: the learning rate decays over it, across resumed slots.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Global batch (split over processes).")
@click.option("--patch", type=click.IntRange(min=8), default=32, show_default=True,
              help="LR patch side; HR patches are patch x scale.")
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Adam learning rate at the first step, decaying along a cosine to --lr-min "
                   "over --iterations (the shipped models' recipe; lower to fine-tune: --init).")
@click.option("--lr-min", type=float, default=1e-6, show_default=True,
              help="Learning rate at the last of --iterations.")
@click.option("--dual-lambda", type=float, default=0.1, show_default=True,
              help="Weight of the dual loss (0 turns dual regression off).")
@click.option("--seed", type=int, default=0, show_default=True, help="0 to 2**31 - 1.")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Benchmark folder for periodic validation PSNR.")
@click.option("--val-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steps between validations on --val-data (best.safetensors keeps the best).")
@click.option("--save-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steps between saves of the resumable state and the last weights.")
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Steps between rows of the losses in the run's metrics.csv.")
@device_option
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default="auto",
              show_default=True, help="Mixed precision (auto: bf16 on CUDA, none on CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per process.")
@click.option("--adapt", multiple=True, type=click.Path(exists=True),
              help="Real LR video or image folder for unpaired adaptation (repeatable).")
@click.option("--adapt-weight", type=float, default=1.0, show_default=True,
              help="Weight of the --adapt loss (the dual loss on the real LR crops).")
@click.option("--adapt-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Real LR crops from --adapt per step.")
@click.option("--adapt-degradation", default="auto", show_default=True,
              help="How the --adapt frames were degraded: auto (a Gaussian blur estimated from "
                   "the frames), gaussian:SIGMA (in HR pixels), or dual (the learned duals).")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from this checkpoint's weights.")
@click.option("--resume", "resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the run in this folder exactly where it stopped.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (DDP; gloo on CPU, nccl on CUDA).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Minutes (from start-up): then stop between two steps with a resumable "
                   "state; --resume continues exactly.")
@click.option("--compile", "compile_", is_flag=True, default=False,
              help="torch.compile the training step (worth it for long GPU runs).")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The device's dense bf16 peak for the FLOP utilisation figure (default: "
                   "known GPUs, e.g. H200 989).")
@click.option("--state-moments", type=click.Choice(["fp32", "bf16", "none"]), default="fp32",
              show_default=True,
              help="Optimizer moments in the saved state: fp32 resumes exactly, bf16 halves "
                   "them, none leaves them out (a third of the size; Adam restarts).")
@click.option("--state-shard-mib", type=click.FloatRange(min=2), default=None,
              help="Write the state as files of at most this many MiB "
                   "(train_state.<save id>.00.safetensors, ..., named by "
                   "train_state.index.json).")
@click.option("--degrade", default=None,
              help="Train on degraded LR input: a degradation chain as in vsr eval --degrade, "
                   "e.g. 'blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4,x264:crf=18~32'; values drawn "
                   "per crop, and :p=P codes only a share P of the crops "
                   "('bicubic,x264:crf=12~38:p=0.6'). The dual loss keeps the clean downscale "
                   "as its target.")
@click.option("--consistency", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a temporal consistency loss: with a video codec in --degrade, the "
                   "primal also upscales the frame before each crop's (moved and coded "
                   "differently, as consecutive frames are) and the two outputs, aligned, must "
                   "agree. Less flicker on compressed video; costs a second primal pass.")
@click.option("--degrade-workers", type=click.IntRange(min=1), default=None,
              help="Threads coding the degraded crops (default: CPU count, at most 8).")
@json_option
def train(arch, data, out, iterations, batch_size, patch, lr, lr_min, dual_lambda, seed,
          val_data, val_every, save_every, log_every, device, amp, threads, adapt,
          adapt_weight, adapt_batch, adapt_degradation, init, resume, nproc, time_limit,
          compile_, peak_tflops, state_moments, state_shard_mib, degrade, consistency,
          degrade_workers, as_json) -> None:
    """Train a DRN with dual regression on HR images (and optionally adapt to real LR video).

    With --resume RUN_DIR the saved config.json of that run is used as it was, except for the
    options given that decide how it runs, not what it computes (--device, --threads,
    --time-limit, --compile, --peak-tflops, --log-every, --save-every, --val-every, --amp,
    --state-moments, --state-shard-mib, --degrade-workers); any other option is refused.

    Ctrl-C, SIGTERM or SIGHUP stops the run after its current step with the state saved
    (exit 130, 143, 129); --resume continues it exactly. A second one stops at once, as do
    ranks spawned by --nproc (they resume from their last save).
    """
    from vsr.train import TrainConfig
    from vsr.train import train as run_train
    from vsr.train.config import RUNTIME_FIELDS, resume_config
    from vsr.train.trainer import summary

    given = {"time_limit": time_limit, "compile": compile_, "peak_tflops": peak_tflops,
             "state_moments": state_moments, "state_shard_mib": state_shard_mib,
             "degrade_workers": degrade_workers, "device": device, "threads": threads,
             "log_every": log_every, "save_every": save_every, "val_every": val_every,
             "amp": amp}
    if resume:
        ctx = click.get_current_context()
        params = {"compile": "compile_"}
        _refuse_fixed_options(ctx, {params.get(k, k) for k in RUNTIME_FIELDS})
        overrides = {k: v for k, v in given.items() if k in RUNTIME_FIELDS and
                     ctx.get_parameter_source(params.get(k, k)) ==
                     click.core.ParameterSource.COMMANDLINE}
        overrides["time_limit"] = time_limit  # a budget is this process's, never inherited
        # the folder may have moved (a state carried to a GPU): its config says where it was
        config = resume_config(resume, **overrides)
    else:
        if (arch is None and init is None) or not data or out is None:
            raise click.UsageError("--arch (or --init), --data and --out are required "
                                   "(or --resume RUN_DIR)")
        overrides = {}
        if arch is None:  # the checkpoint's own network: its family and full hparams
            from vsr.models import read_info

            info = read_info(init)
            arch, overrides = info.arch, dict(info.hparams)
        config = TrainConfig(arch=arch, data=data, out=out, iterations=iterations,
                             batch_size=batch_size, patch=patch, lr=lr, lr_min=lr_min,
                             dual_lambda=dual_lambda, seed=seed, val_data=val_data,
                             val_every=val_every, save_every=save_every, log_every=log_every,
                             device=device, amp=amp, threads=threads, adapt=adapt,
                             adapt_weight=adapt_weight, adapt_batch=adapt_batch,
                             adapt_degradation=adapt_degradation, init=init,
                             model_overrides=overrides, degrade=degrade,
                             consistency=consistency,
                             **{k: given[k] for k in ("time_limit", "compile", "peak_tflops",
                                                      "state_moments", "state_shard_mib",
                                                      "degrade_workers")})
    # under torchrun every rank runs this command: only rank 0 speaks for the run
    lead = int(os.environ.get("RANK", "0")) == 0
    bar = _Progress(config.iterations) if lead and (sys.stderr.isatty() or not as_json) else None
    requested = threading.Event()
    # Ctrl-C, SIGTERM or SIGHUP: stop after the current step with the state saved (a second
    # one stops at once). Spawned ranks (--nproc > 1) would not see the request: not there.
    try:
        with stop_signals_request(requested) if nproc == 1 else nullcontext([]) as received:
            result = run_train(config, resume=resume is not None, nproc=nproc,
                               progress=bar.update if bar else None, stop=requested)
    finally:  # an error (a diverged run) starts a line of its own
        if bar:
            bar.close()
    s = summary(result)
    # a stopped run says so in its Error line alone (where it stopped, how to go on); its
    # JSON object, "interrupted": true, is still written for the scripts that read it
    if lead and (as_json or not result.interrupted):
        _say_summary(s, config.arch, as_json)
    if result.interrupted:
        raise Interrupted(f"stopped at step {s['steps']} of {s['iterations']} with the state "
                          f"saved; continue with: vsr train --resume {s['run_dir']}"
                          ) from Stopped(received[0] if received else signal.SIGINT)


def _say_summary(s: dict, arch: str, as_json: bool) -> None:
    """The run's last line (or its JSON object)."""
    if as_json:
        emit_json(s)
        return
    stop = " (time limit: resume to continue)" if s["stopped_at_time_limit"] else ""
    mfu = f", {100 * s['mfu']:.1f}% of the peak" if s["mfu"] is not None else ""
    val = (f"{s['best_val_psnr']:.2f} dB" if s["best_val_psnr"] is not None
           else "none (no --val-data)")
    click.echo(f"trained {arch} to step {s['steps']} of {s['iterations']}{stop} "
               f"in {s['seconds']} s ({s['samples_per_s']} samples/s, {s['tflops']} model "
               f"TFLOP/s{mfu}); best val PSNR {val}; run folder {s['run_dir']}")


def _refuse_fixed_options(ctx: click.Context, runtime: set[str]) -> None:
    """With --resume, options that decide what the run computes come from its config.json:
    one given on the command line would be ignored without a word, so it is refused."""
    fixed = [p for p in ctx.command.params
             if p.name not in runtime | {"resume", "nproc", "as_json"}
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if fixed:
        names = ", ".join(p.opts[0] for p in fixed)
        raise click.UsageError(f"{names}: fixed by the run's config.json, cannot change on "
                               f"--resume (only how it runs can: --device, --threads, "
                               f"--time-limit, ...); start a new run to change it")


class _Progress:
    """A one-line progress report on stderr: step, loss, samples/s, ETA."""

    def __init__(self, total: int) -> None:
        import time

        self.total = total
        self.t0 = time.perf_counter()
        self.first: int | None = None
        self.last = 0.0
        self.val = ""
        self.shown = False  # a line is on the terminal: close ends it

    def update(self, rep) -> None:
        import time

        now = time.perf_counter()
        if self.first is None:  # the rate counts from the first report (start-up excluded)
            self.first, self.t0 = rep.step, now
        if rep.val_psnr is not None:
            self.val = f" val {rep.val_psnr:.2f} dB"
        if now - self.last < 1.0 and rep.step != rep.total:
            return
        self.last = now
        done, elapsed = rep.step - self.first, now - self.t0
        speed = "- it/s ETA -"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            eta = (rep.total - rep.step) / rate
            speed = f"{rate:.2f} it/s ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        loss = "-" if math.isnan(rep.loss) else f"{rep.loss:.4f}"  # none before the first log
        click.echo(f"\r[{rep.step}/{rep.total}] loss {loss}{self.val} {speed}   ",
                   err=True, nl=False)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)
        self.shown = False
