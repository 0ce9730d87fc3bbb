"""`vsr upscale IN OUT`: one video or image file, upscaled, every other stream carried over."""

from __future__ import annotations

import sys
import time

import click

from vsr.cli.common import (
    audio_option,
    decoder_option,
    deinterlace_option,
    emit_json,
    encode_config,
    encode_options,
    encoder_option,
    json_option,
    model_options,
    progress_option,
    wants_progress,
)
from vsr.cli.main import printable
from vsr.options import plural


class _Bar:
    """A one-line progress display on stderr: frames, fps, ETA (redrawn at most 4x a second)."""

    def __init__(self, show: bool | None) -> None:
        """``show``: True always, False never, None when stderr is a terminal."""
        self.enabled = wants_progress(show)
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
@model_options()
@encode_options()
@decoder_option
@deinterlace_option
@encoder_option
@audio_option
@click.option("--frames", type=click.IntRange(min=1), default=None, metavar="N",
              help="Upscale only the first N frames (a preview of a long file); every other "
                   "stream ends where they do. Not with --encoder ffmpeg.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@progress_option()
@json_option
def upscale(input_path: str, output_path: str, model: str | None, scale: int | None,
            device: str, precision: str, tile: int | None, codec: str, crf: int | None,
            preset: str | None, pix_fmt: str | None, decoder: str, deinterlace: bool,
            encoder: str, no_audio: bool, frames: int | None,
            overwrite: bool, progress: bool | None, backend: str, batch: int,
            deflicker: float, as_json: bool) -> None:
    """Upscale the video (or image: PNG, JPEG, BMP, TIFF, WebP, PPM/PGM) IN into OUT.

    Audio, subtitle and attachment streams are copied unchanged (--no-audio: no audio),
    timestamps are kept, and OUT appears only once it is complete.

    Which model: the default, drn-t-x2-drc50, is best on clean, uncompressed input; for
    H.264 files at ordinary streaming quality (H.265 not measured) pick --model drn-t-x2-drc50-x264
    (+0.09..+1.81 dB over bicubic at CRF 28, against -0.03..+1.36 for the default; 0.23 dB
    below the default on clean Set5), and add --deflicker 0.5 to stop the flicker it adds.

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
    from vsr.upscale import UpscaleConfig, upscale_file

    config = UpscaleConfig(
        input=input_path, output=output_path, model=model, scale=scale, device=device,
        precision=precision, tile=tile,
        encode=encode_config(codec, crf, preset, pix_fmt),
        decoder=decoder, deinterlace=deinterlace, encoder=encoder, overwrite=overwrite,
        backend=backend, batch=batch, deflicker=deflicker, audio=not no_audio, frames=frames,
    )
    bar = _Bar(progress)
    try:
        result = upscale_file(config, progress=bar)
    finally:
        bar.done()
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(printable(f"{plural(result.frames_out, 'frame')} -> {result.output} "
                             f"({result.width}x{result.height}) in {result.seconds:.1f} s, "
                             f"{result.fps:.2f} fps"), err=True)
