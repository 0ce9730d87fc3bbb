"""`vsr stream SRC DST`: upscale a live stream (udp://, tcp://, rtmp://, http input, srt://
output through the ffmpeg program, `-` for stdin/stdout as MPEG-TS, files)."""

from __future__ import annotations

import json
import os
import sys

import click

from vsr.cli.common import deinterlace_option, encode_config, encode_options, model_options
from vsr.options import STREAM_DEFLICKER
from vsr.stream.run import DROP_POLICIES


def _render(as_json: bool, to_stdout: bool):
    gone = False  # the reader of the JSON lines has closed stdout

    def show(s) -> None:
        nonlocal gone
        if as_json:
            stream = sys.stdout if to_stdout else sys.stderr
            if gone or stream is None:
                return
            try:
                stream.write(json.dumps(s.to_json()) + "\n")
                stream.flush()
            except BrokenPipeError:
                # `| head -1`: the stream goes on (its output is DST); the statistics stop.
                # Python would report the lost write again at exit: stdout goes to /dev/null
                gone = True
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                click.echo("warning: the reader of the statistics has gone; the stream goes "
                           "on without them", err=True)
            return
        if s.final and s.error and not (s.frames_in or s.audio_in or s.corrupt):
            return  # failed before anything came in: the Error line alone says it
        lat = f"{s.latency_ms:.0f} ms (max {s.latency_max_ms:.0f})" if s.latency_ms is not None \
            else "-"
        head = "total" if s.final else f"{s.elapsed_s:7.1f} s"
        full = f" ({s.overflowed} for want of memory)" if s.overflowed else ""
        # a failure's reason is not here: the command's Error line after it says it
        click.echo(f"{head}: in {s.frames_in} ({s.fps_in:.1f} fps) out {s.frames_out} "
                   f"({s.fps_out:.1f} fps) dropped {s.dropped}{full}"
                   + (f" left at stop {s.left_at_stop}" if s.left_at_stop else "")
                   + f" latency {lat} "
                   f"reconnects {s.reconnects} audio {s.audio_out}/{s.audio_in}"
                   + (f" corrupt {s.corrupt}" if s.corrupt else "")
                   + (f" audio skipped {s.audio_skipped}" if s.audio_skipped else ""),
                   err=True)
    return show


@click.command()
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@model_options(deflicker=STREAM_DEFLICKER)
@encode_options(preset_help="Encoder preset (x264/x265 default: veryfast).")
@click.option("--gop", type=click.IntRange(min=1), default=None,
              help="Keyframe interval in frames (default: one second).")
@click.option("--max-latency", "max_latency", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Frames older than MS are dropped (with --drop oldest).")
@click.option("--drop", type=click.Choice(DROP_POLICIES), default="oldest",
              show_default=True,
              help="What to do when inference falls behind: oldest drops frames older than "
                   "--max-latency; none makes the source wait and keeps every frame, also at a "
                   "stop (the frames read are written first: at most 8 waiting and a batch in "
                   "the model; a second Ctrl-C leaves them, counted as 'left at stop').")
@click.option("--reconnect", is_flag=True, help="Reopen the source with backoff when it goes.")
@click.option("--timeout", "read_timeout", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds without data before the source counts as gone.")
@click.option("--input-format", default=None, help="Force the input format (e.g. mpegts).")
@click.option("--format", "output_format", default=None,
              help="Output format (default: flv for rtmp://, MPEG-TS in RTP for rtp://, "
                   "mpegts for other URLs and -, else from the name).")
@click.option("--via-ffmpeg", is_flag=True,
              help="Send the output through the ffmpeg program (automatic for srt://).")
@click.option("--overwrite", is_flag=True,
              help="Replace DST if it is an existing file (pipes, devices and URLs need not).")
@deinterlace_option
@click.option("--no-audio", "no_audio", is_flag=True,
              help="Video only (default: the source's audio is copied, not re-encoded).")
@click.option("--stats-interval", type=click.FloatRange(min=0.1), default=2.0,
              show_default=True, help="Seconds between stats lines.")
@click.option("--json", "as_json", is_flag=True,
              help="Stats as JSON lines (on stdout, or stderr when DST is -).")
def stream(src: str, dst: str, model: str | None, scale: int | None, device: str,
           precision: str, tile: int | None, backend: str, batch: int, deflicker: float,
           codec: str,
           crf: int | None, preset: str | None, pix_fmt: str | None, gop: int | None,
           max_latency: int, drop: str, reconnect: bool, read_timeout: float,
           input_format: str | None, output_format: str | None, via_ffmpeg: bool,
           overwrite: bool, deinterlace: bool, no_audio: bool, stats_interval: float,
           as_json: bool) -> None:
    """Upscale the live stream SRC to DST until the source ends or Ctrl-C.

    Both are URLs FFmpeg understands, or - for MPEG-TS on stdin/stdout; the source's audio is
    copied alongside (--no-audio: video only). Ctrl-C, SIGTERM or SIGHUP
    closes the output cleanly (exit 0); a source that fails without --reconnect exits 1, with
    the output closed cleanly too; one that stops sending for --timeout seconds has ended
    (exit 0). An existing DST file is replaced only with --overwrite, and never when it is
    SRC itself (or a link to it).

    Without --model (at x2) the model is drn-t-x2-drc50-x264, trained for H.264-compressed
    input, which live streams are, and --deflicker is 0.5 (--deflicker 0: off).
    """
    from vsr.errors import InputError
    from vsr.stream import StreamConfig, run_stream

    config = StreamConfig(
        src=src, dst=dst, model=model, scale=scale, device=device, precision=precision,
        tile=tile, backend=backend, batch=batch, deflicker=deflicker,
        encode=encode_config(codec, crf, preset, pix_fmt),
        max_latency_ms=max_latency, drop=drop, reconnect=reconnect, read_timeout_s=read_timeout,
        input_format=input_format, output_format=output_format, gop=gop, via_ffmpeg=via_ffmpeg,
        stats_interval_s=stats_interval, audio=not no_audio, overwrite=overwrite,
        deinterlace=deinterlace)

    # Ctrl-C, SIGTERM and SIGHUP (the CLI's stop signals, vsr.cli.main.STOPPABLE) end the
    # stream as its normal end: run_stream closes the output cleanly and returns
    final = run_stream(config, stats=_render(as_json, to_stdout=dst != "-"))
    if final.error:  # the output is closed cleanly, with every frame written before the failure
        written = f" (the output was closed with {final.frames_out} frames)" \
            if final.frames_out else ""
        raise InputError(final.error + written)
