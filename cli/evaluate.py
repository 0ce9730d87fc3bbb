"""`vsr eval`: PSNR/SSIM of a model (or the bicubic baseline) on benchmark folders or clips."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from vsr.cli.common import (
    PrecisionChoice,
    deflicker_option,
    device_option,
    emit_json,
    json_option,
    model_option,
    scale_option,
)
from vsr.errors import ConfigError
from vsr.options import EVAL_BASELINES, plural

if TYPE_CHECKING:
    from vsr.evaluate import DatasetResult, Progress
    from vsr.video_eval import ClipResult


class _StderrProgress:
    """Per-image progress on stderr: a rewritten line on a terminal, one line per set otherwise;
    ``unit``: what is scored (a clip's frames)."""

    def __init__(self, unit: str = "image") -> None:
        self._tty = sys.stderr.isatty()
        self._unit = unit

    def __call__(self, event: Progress) -> None:
        if self._tty:
            click.echo(f"\r{event.dataset}: {event.index}/{event.total} {event.image:<24.24}",
                       nl=event.index == event.total, err=True)
        elif event.index == event.total:
            click.echo(f"{event.dataset}: {plural(event.total, self._unit)} scored", err=True)


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


def _video_table(results: Sequence[ClipResult]) -> str:
    base = results[0].baseline is not None
    header = ("clip", "scale", "frames", "PSNR", "SSIM", "flicker")
    if base:
        header += ("bicubic PSNR", "gain", "bicubic flicker")
    rows = []
    for r in results:
        row = (r.dataset, f"x{r.scale}", str(r.frames), f"{r.scores.psnr:.4f}",
               f"{r.scores.ssim:.5f}", f"{r.scores.flicker:.4f}")
        if r.baseline is not None:
            row += (f"{r.baseline.psnr:.4f}", f"{r.scores.psnr - r.baseline.psnr:+.4f}",
                    f"{r.baseline.flicker:.4f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{results[0].model} on {results[0].degrade}"]
    for row in [header, *rows]:
        tail = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *tail]))
    return "\n".join(lines)


@click.command("eval")
# --data and --video stay str: click's Path('') is '.' (an unset shell variable scored the
# current folder); the configs refuse an empty path by name
@click.option("--data", "-d", "data", multiple=True, type=click.Path(file_okay=False),
              help="Benchmark folder (its HR/ subfolder, or itself holding HR images). Repeatable.")
@click.option("--video", "videos", multiple=True, type=click.Path(dir_okay=False),
              help="Score on a video clip instead: its first --frames frames are the HR frames "
                   "and --degrade makes the LR input. Repeatable; not with --data.")
@click.option("--degrade", "degrade", default=None, metavar="SPEC",
              help="With --video: the degradation chain that makes the LR clip, stages "
                   "comma-separated, e.g. bicubic,x264:crf=28 or blur:sigma=1,bicubic,"
                   "noise:sigma=2,jpeg:q=60 (stages: blur:sigma, bicubic|bilinear|area, "
                   "noise:sigma, jpeg:q, x264:crf[:preset], x265:crf[:preset]; a value A~B is "
                   "drawn per clip and needs --seed; :p=P applies a stage with probability P). "
                   "Default: bicubic.")
@click.option("--frames", type=click.IntRange(min=2), default=16, show_default=True,
              help="With --video: HR frames decoded from the start of each clip.")
@scale_option
@model_option()
@click.option("--seed", type=int, default=None,
              help="With --video: seed for random stages (ranges, noise).")
@click.option("--baseline", type=click.Choice(EVAL_BASELINES), default=None,
              help="Score a baseline instead of a model; with --video, score it as well as the "
                   "model, on the same LR frames.")
@device_option
@click.option("--precision", type=PrecisionChoice(), default="fp32", show_default=True,
              help="Compute precision of the model: fp32 scores the model itself; auto scores "
                   "what vsr upscale runs on this machine for 8-bit frames of 50,000 pixels and "
                   "more, whatever the image size (see vsr upscale --help).")
@deflicker_option()
@click.option("--raw-gray", is_flag=True,
              help="Score grayscale files on their gray values instead of Y, as the MATLAB "
                   "scripts behind published tables do (Set14's bridge.png). With --data only.")
@json_option
def evaluate(data: tuple[str, ...], videos: tuple[str, ...], degrade: str | None,
             frames: int, seed: int | None, scale: int | None, model: str | None,
             baseline: str | None, device: str, precision: str, deflicker: float,
             raw_gray: bool,
             as_json: bool) -> None:
    """PSNR/SSIM on the Y channel with the standard SR protocol, on images or video.

    Images (--data): the LR input is MATLAB's bicubic downscale of each HR image (cropped to a
    multiple of the scale); the output is scored with SCALE pixels shaved from every border.
    Give exactly one of --model and --baseline.

    Video (--video, not with --data): the first --frames frames of each clip, cropped to a
    multiple of the scale (top-left kept), are the HR frames; --degrade makes the LR clip from
    them (video codecs code the whole clip, GOP and all); the model (default: the registry's
    default) upscales each frame. Per clip: mean Y-PSNR and SSIM over the frames (SCALE pixels
    shaved) and flicker, the mean over consecutive frames of the RMSE, in 8-bit Y levels,
    between the output's frame-to-frame change and the HR's (0 for a perfect upscaler; lower
    is steadier). --baseline bicubic adds bicubic's figures on the same LR frames.

    An output identical to its HR (a flat image, a black frame) has an infinite PSNR: it
    counts 60 dB in a set's or clip's mean (one such picture made the mean infinite). With
    --json, a figure that is still not finite (a per-picture PSNR) is null: strict JSON has
    no Infinity.
    """
    # torch-heavy modules load here, so that `vsr eval --help` answers at once
    from vsr.evaluate import EvalConfig, run_evaluation, summarize
    from vsr.video_eval import VideoEvalConfig, run_video_evaluation, summarize_video

    if data and videos:
        raise ConfigError("give --data (images) or --video (clips), not both")
    if videos:
        if raw_gray:
            raise ConfigError("--raw-gray applies to image eval (--data); clips are scored on Y")
        video_config = VideoEvalConfig(videos=videos,
                                       degrade="bicubic" if degrade is None else degrade,
                                       frames=frames, model=model, baseline=baseline,
                                       scale=scale, device=device, seed=seed,
                                       precision=precision, deflicker=deflicker)
        clips = run_video_evaluation(video_config, progress=_StderrProgress(unit="frame"))
        if as_json:
            emit_json(summarize_video(clips))
        else:
            click.echo(_video_table(clips))
        return
    if not data:
        raise ConfigError("give a benchmark folder (--data) or a clip (--video)")
    frames_given = click.get_current_context().get_parameter_source("frames") \
        not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    if degrade is not None or seed is not None or deflicker or frames_given:
        raise ConfigError("--degrade, --frames, --seed and --deflicker apply to --video; image "
                          "eval uses the bicubic protocol on every image")
    config = EvalConfig(data=data, scale=scale, model=model, baseline=baseline, device=device,
                        raw_gray=raw_gray, precision=precision)
    results = run_evaluation(config, progress=_StderrProgress())
    if as_json:
        emit_json(summarize(results))
    else:
        click.echo(_table(results))
