"""`vsr upscale IN OUT`: one video or image file, upscaled, every other stream carried over."""

from __future__ import annotations

import sys
import time

import click

from vsr.cli.common import (
    backend_option,
    batch_option,
    device_option,
    emit_json,
    json_option,
    model_option,
    precision_option,
    scale_option,
)


class _Bar:
    """A one-line progress display on stderr: frames, fps, ETA (redrawn at most 4x a second)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty() or enabled == "always"
        self._last = 0.0

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.25 and p.frames_done != p.frames_total:
            return
        self._last = now
        total = f"/{p.frames_total}" if p.frames_total else ""
        eta = f" ETA {int(p.eta) // 60}:{int(p.eta) % 60:02d}" if p.eta is not None else ""
        pct = f" {100 * p.frames_done / p.frames_total:5.1f}%" if p.frames_total else ""
        sys.stderr.write(f"\r{p.frames_done}{total} frames{pct} {p.fps:6.2f} fps{eta}   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


@click.command()
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUT", type=click.Path(dir_okay=False))
@model_option()
@scale_option
@device_option
@precision_option
@click.option("--tile", type=click.IntRange(min=32), default=None,
              help="Infer in tiles of N px (with overlap); automatic on CUDA out-of-memory.")
@click.option("--codec", default="libx264", show_default=True,
              help="Video encoder: libx264, libx265, libsvtav1, ffv1, prores_ks, h264_nvenc...")
@click.option("--crf", type=click.IntRange(0, 63), default=None, help="Constant quality.")
@click.option("--preset", default=None, help="Encoder preset (e.g. veryfast, slow).")
@click.option("--pix-fmt", default=None,
              help="Output pixel format (default: the input's depth where the codec allows).")
@click.option("--decoder", type=click.Choice(["pyav", "decord"]), default="pyav",
              show_default=True)
@click.option("--encoder", type=click.Choice(["pyav", "ffmpeg"]), default="pyav",
              show_default=True, help="ffmpeg: pipe to the system ffmpeg program.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--progress/--no-progress", default=None,
              help="Progress line on stderr (default: when stderr is a terminal).")
@backend_option
@batch_option
@json_option
def upscale(input_path: str, output_path: str, model: str | None, scale: int | None,
            device: str, precision: str, tile: int | None, codec: str, crf: int | None,
            preset: str | None, pix_fmt: str | None, decoder: str, encoder: str,
            overwrite: bool, progress: bool | None, backend: str, batch: int,
            as_json: bool) -> None:
    """Upscale the video (or PNG/JPEG image) IN into OUT.

    Audio, subtitle and attachment streams are copied unchanged, timestamps are kept, and
    OUT appears only once it is complete.

    \b
    Limits for untrusted files, checked before anything is decoded or built:
      pictures and video frames over 50,000,000 pixels (raise: VSR_MAX_PIXELS=N),
      networks over 200,000,000 parameters (raise: VSR_MAX_MODEL_PARAMS=N).

    \b
    Ctrl-C, SIGTERM and SIGHUP stop the run and remove the partial output; the exit
    status is 128 + the signal: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP). The hidden
    .OUT.PID.HEX.partial file of a run killed outright (SIGKILL, power loss) is removed
    by the next run writing OUT, once that process is gone.
    """
    from vsr.io.sink import EncodeConfig
    from vsr.upscale import UpscaleConfig, upscale_file

    config = UpscaleConfig(
        input=input_path, output=output_path, model=model, scale=scale, device=device,
        precision=precision, tile=tile,
        encode=EncodeConfig(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt),
        decoder=decoder, encoder=encoder, overwrite=overwrite, backend=backend, batch=batch,
    )
    bar = _Bar("always" if progress else bool(progress is None))
    try:
        result = upscale_file(config, progress=bar)
    finally:
        bar.done()
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"{result.frames_out} frames -> {result.output} "
                   f"({result.width}x{result.height}) in {result.seconds:.1f} s, "
                   f"{result.fps:.2f} fps", err=True)
