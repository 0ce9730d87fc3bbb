"""`vsr batch INPUTS... -o DIR`: many files, resumable, on several devices or a Ray cluster."""

from __future__ import annotations

import sys
import time

import click

from vsr.cli.common import (
    audio_option,
    deinterlace_option,
    emit_json,
    encode_options,
    json_option,
    model_options,
    progress_option,
    wants_progress,
)
from vsr.cli.main import printable
from vsr.options import plural


class _BatchBar:
    """Progress over the batch on stderr: files, frames, fps, ETA (at most every 0.5 s)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, p) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < (0.5 if self._tty else 2.0):
            return
        self._last = now
        eta = f" ETA {int(p.eta) // 60}:{int(p.eta) % 60:02d}" if p.eta is not None else ""
        line = (f"files {p.files_done + p.files_skipped}/{p.files_total} "
                f"(failed {p.files_failed}) frames {p.frames_done}/{p.frames_total} "
                f"{p.fps:.1f} fps{eta}")
        sys.stderr.write(f"\r{line}   " if self._tty else line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")


def _devices(ctx, param, value: str) -> tuple[str, ...]:
    devices = tuple(d.strip() for d in value.split(",") if d.strip())
    if not devices:
        raise click.BadParameter("name at least one device, e.g. cpu or cuda:0,cuda:1")
    return devices


@click.command()
@click.argument("inputs", nargs=-1, metavar="INPUTS...")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (job state is kept in DIR/.vsr-batch).")
@click.option("--manifest", multiple=True, type=click.Path(dir_okay=False),
              help="File with one input per line, or JSON lines {\"input\": ..., options}.")
@click.option("--name", "template", default="{dir}/{stem}{suffix}", show_default=True,
              help="Output name template: {dir} {stem} {name} {suffix} {ext} {scale} "
                   "{model} {index} ({model}: the registry name or the checkpoint's file "
                   "stem; the default model's name without --model).")
@model_options(device=False)  # the devices are the workers' (--devices)
@encode_options()
@deinterlace_option
@audio_option
@click.option("--devices", default="auto", show_default=True, callback=_devices,
              help="Comma-separated workers sharing the queue: cpu,cpu or cuda:0,cuda:1.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run segments as Ray tasks on the cluster at ADDRESS (or 'auto').")
@click.option("--resume", is_flag=True,
              help="Keep the finished segments of unfinished files and redo only the rest.")
@click.option("--overwrite", is_flag=True, help="Redo finished files and replace outputs.")
@click.option("--wait", is_flag=True,
              help="If another vsr batch is running on DIR, wait for it to end (default: "
                   "refuse at once).")
@click.option("--segment-frames", type=click.IntRange(min=1), default=300, show_default=True,
              help="Cut videos at the first keyframe after this many frames (with "
                   "--deflicker a video is one segment: the filter runs through it in order).")
@progress_option("Batch progress on stderr")
@json_option
def batch(inputs: tuple[str, ...], output_dir: str, manifest: tuple[str, ...], template: str,
          model: str | None, scale: int | None, precision: str, tile: int | None, backend: str,
          batch: int, deflicker: float, codec: str, crf: int | None, preset: str | None,
          pix_fmt: str | None, deinterlace: bool, no_audio: bool, devices: tuple[str, ...],
          ray_address: str | None, resume: bool, overwrite: bool, wait: bool,
          segment_frames: int, progress: bool | None, as_json: bool) -> None:
    """Upscale many files into DIR; finished files are skipped on a rerun.

    INPUTS are files, folders (searched recursively) or glob patterns; a search never takes
    files from DIR, and an input folder may not be DIR or lie inside it. One failing file
    never stops the others; the exit status is 1 when any failed. Every output stays inside
    DIR. One batch at a time runs on DIR (a second refuses, or waits with --wait). Ctrl-C,
    SIGTERM or SIGHUP stop it cleanly (exit 130, 143, 129); rerun with --resume to finish.
    """
    from vsr.jobs import BatchConfig, JobOptions, run_batch

    options = JobOptions(model=model, scale=scale, precision=precision, tile=tile,
                         backend=backend, batch=batch, deflicker=deflicker, codec=codec,
                         crf=crf, preset=preset, pix_fmt=pix_fmt, deinterlace=deinterlace,
                         audio=not no_audio)
    config = BatchConfig(inputs=inputs, output_dir=output_dir, manifests=manifest,
                         template=template, options=options, devices=devices, resume=resume,
                         overwrite=overwrite, segment_frames=segment_frames, ray=ray_address,
                         wait=wait)
    bar = _BatchBar(wants_progress(progress))
    try:
        result = run_batch(config, progress=bar)
    finally:
        bar.done()
    for item in result.failed:  # one line each, whatever a file name holds (a newline...)
        click.echo(printable(f"failed: {item['input']}: {item['error']}"), err=True)
    discarded = f", {result.segments_discarded} discarded" if result.segments_discarded else ""
    click.echo(f"{len(result.done)} done, {len(result.skipped)} skipped, "
               f"{len(result.failed)} failed; "
               f"{plural(result.segments_computed, 'segment')} computed, "
               f"{result.segments_reused} reused{discarded}, "
               f"{plural(result.frames_computed, 'frame')} in {result.seconds:.1f} s", err=True)
    if as_json:
        emit_json(result.to_json())
    if result.failed:
        sys.exit(1)  # the summary is out; a failed file makes the whole batch fail
