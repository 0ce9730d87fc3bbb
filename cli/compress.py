"""`vsr compress`: DRC (search -> prune -> fine-tune) or the L1 baseline, stage by stage."""

from __future__ import annotations

import sys
import time

import click

from vsr.cli.common import emit_json, json_option
from vsr.options import COMPRESS_METHODS, COMPRESS_REFITS, COMPRESS_STAGES


class _Progress:
    """One rewritten stderr line per stage (a line per 10% when not on a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.stage = ""
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, stage: str, step: int, total: int, message: str) -> None:
        now = time.perf_counter()
        if stage != self.stage:
            if self.stage and self.tty:
                click.echo("", err=True)
            self.stage, self.t0, self.last = stage, now, 0.0
        final = step == total
        if self.tty:
            if now - self.last < 0.5 and not final:
                return
            click.echo(f"\r{stage}: {step}/{total} {message} ({now - self.t0:.0f} s)   ",
                       err=True, nl=False)
            if final:
                click.echo("", err=True)
        elif final or step % max(1, total // 10) == 0:
            click.echo(f"{stage}: {step}/{total} {message} ({now - self.t0:.0f} s)", err=True)
        self.last = now


@click.command("compress")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Trained DRN checkpoint (.safetensors) to compress.")
@click.option("--ratio", "-r", required=True, type=click.FloatRange(0, 1, min_open=True,
              max_open=True), help="Pruning ratio r: widths are capped at c*(1-r).")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True),
              help="HR image folder or image pack (.npz, as vsr train's; repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (search.json, pruned/compressed .safetensors, summary.json).")
@click.option("--stage", type=click.Choice(COMPRESS_STAGES),
              default="all", show_default=True, help="Run one stage alone (reads the previous "
              "stage's file in --out) or all three.")
@click.option("--method", type=click.Choice(COMPRESS_METHODS), default="drc",
              show_default=True,
              help="drc: searched widths + dual regression pruning; l1: L1-norm baseline.")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Benchmark folder for validation PSNR (best search readout, best fine-tune).")
@click.option("--duals", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File with the trained dual models (dual.* tensors), e.g. the training "
                   "state (a sharded one by its train_state.index.json); otherwise they are "
                   "fitted to the frozen network first.")
@click.option("--widths-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use the widths of this search.json (e.g. the L1 baseline at DRC's widths).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Patches per step of the search and of the fine-tuning.")
@click.option("--patch", type=click.IntRange(min=8), default=32, show_default=True,
              help="LR patch side.")
@click.option("--search-steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="Steps of the channel-number search.")
@click.option("--search-val-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Search steps between readouts of the widths on the held-out images.")
@click.option("--prune-batches", type=click.IntRange(min=1), default=2, show_default=True,
              help="Batches of LR patches the pruning selects channels on.")
@click.option("--prune-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="LR patches per pruning batch.")
@click.option("--prune-refit", type=click.Choice(COMPRESS_REFITS), default="lstsq",
              show_default=True, help="Fine-tuning after each selected channel: closed-form "
              "least squares on the feature reconstruction, or the paper's one SGD pass.")
@click.option("--finetune-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Steps of fine-tuning the pruned network.")
@click.option("--lr", "finetune_lr", type=float, default=1e-3, show_default=True,
              help="Fine-tuning learning rate (cosine to 1e-6); the default, the lr the base "
                   "network was trained with, did best for drn-t (benchmarks/COMPRESS_RESULTS.md).")
@click.option("--distill", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of feature distillation from the unpruned network (0: off).")
@click.option("--val-every", type=click.IntRange(min=1), default=250, show_default=True,
              help="Fine-tuning steps between validations on --val-data.")
@click.option("--dual-warmup", type=click.IntRange(min=0), default=200, show_default=True,
              help="Steps fitting fresh dual models when no --duals file is given.")
@click.option("--seed", type=int, default=0, show_default=True, help="0 to 2**31 - 1.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (torch's intra-op threads for this process).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True,
              help="Replace the files an earlier run left in --out (those of the stages run "
                   "and of the later stages, which no longer follow from them).")
@json_option
def compress(checkpoint, ratio, data, out, stage, method, val_data, duals, widths_from,
             batch_size, patch, search_steps, search_val_every, prune_batches, prune_batch_size,
             prune_refit, finetune_steps, finetune_lr, distill, val_every, dual_warmup, seed,
             threads, device, overwrite, as_json) -> None:
    """Compress a trained DRN with dual regression compression (or the L1 baseline).

    The result, OUT/compressed.safetensors, is an ordinary checkpoint: `vsr upscale --model`,
    `vsr eval --model` and `vsr export` take it alone.
    """
    from vsr import configure_runtime
    from vsr.compress import CompressConfig
    from vsr.compress import compress as run_compress

    if threads is not None:  # process-wide: the command's to set, not the library's
        configure_runtime(threads=threads, omp_wait_policy=None, keep_freed_memory=False)

    config = CompressConfig(
        checkpoint=checkpoint, ratio=ratio, data=data, out=out, stage=stage, method=method,
        val_data=val_data, duals=duals, widths_from=widths_from, batch_size=batch_size,
        patch=patch, search_steps=search_steps, search_val_every=search_val_every,
        prune_batches=prune_batches, prune_batch_size=prune_batch_size,
        prune_refit=prune_refit,
        finetune_steps=finetune_steps, finetune_lr=finetune_lr, distill=distill,
        val_every=val_every, dual_warmup=dual_warmup, seed=seed, device=device,
        overwrite=overwrite)
    result = run_compress(config, progress=_Progress())
    if as_json:
        emit_json({"out": str(result.out), "stages": result.stages, **result.summary})
        return
    s = result.summary
    orig = s["original"]
    click.echo(f"{s['method']} r={s['ratio']}: stages {', '.join(result.stages)} -> {out}")
    final = s.get("finetune") or s.get("prune")
    if final:
        click.echo(f"params {orig['params']} -> {final['params']}, mult-adds (96x96) "
                   f"{orig['macs_96'] / 1e9:.3f}G -> {final['macs_96'] / 1e9:.3f}G")
    if s.get("finetune", {}).get("val_psnr") is not None:
        click.echo(f"validation PSNR after fine-tuning: {s['finetune']['val_psnr']:.4f} dB")
