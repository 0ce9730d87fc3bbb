"""`vsr eval`: PSNR/SSIM of a model (or the bicubic baseline) on benchmark folders."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from vsr.cli.common import device_option, emit_json, json_option, model_option, scale_option
from vsr.evaluate import BASELINES, DatasetResult, EvalConfig, Progress, run_evaluation, summarize


class _StderrProgress:
    """Per-image progress on stderr: a rewritten line on a terminal, one line per set otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()

    def __call__(self, event: Progress) -> None:
        if self._tty:
            click.echo(f"\r{event.dataset}: {event.index}/{event.total} {event.image:<24.24}",
                       nl=event.index == event.total, err=True)
        elif event.index == event.total:
            click.echo(f"{event.dataset}: {event.total} images scored", err=True)


def _table(results: Sequence[DatasetResult]) -> str:
    header = ("dataset", "scale", "images", "PSNR", "SSIM")
    rows = [(r.dataset, f"x{r.scale}", str(r.images), f"{r.psnr:.4f}", f"{r.ssim:.5f}")
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        tail = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *tail]
        lines.append("  ".join(cells))
    return "\n".join(lines)


@click.command("eval")
@click.option("--data", "-d", "data", multiple=True, required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Benchmark folder (its HR/ subfolder, or itself holding HR images). Repeatable.")
@scale_option
@model_option()
@click.option("--baseline", type=click.Choice(BASELINES), default=None,
              help="Score a baseline instead of a model.")
@device_option
@click.option("--raw-gray", is_flag=True,
              help="Score grayscale files on their gray values instead of Y, as the MATLAB "
                   "scripts behind published tables do (Set14's bridge.png).")
@json_option
def evaluate(data: tuple[Path, ...], scale: int | None, model: str | None,
             baseline: str | None, device: str, raw_gray: bool, as_json: bool) -> None:
    """PSNR/SSIM on the Y channel with the standard SR protocol.

    The LR input is MATLAB's bicubic downscale of each HR image (cropped to a multiple of the
    scale); the output is scored with SCALE pixels shaved from every border. Give exactly one of
    --model and --baseline.
    """
    config = EvalConfig(data=data, scale=scale, model=model, baseline=baseline, device=device,
                        raw_gray=raw_gray)
    results = run_evaluation(config, progress=_StderrProgress())
    if as_json:
        emit_json(summarize(results))
    else:
        click.echo(_table(results))
