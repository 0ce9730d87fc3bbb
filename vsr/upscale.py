"""The library entry for the main job: one video (or image) file in, upscaled file out.

    result = upscale_file(UpscaleConfig(input="in.mp4", output="out.mkv", model="bicubic",
                                        scale=2), progress=print)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from vsr.device import resolve_device
from vsr.engine import ModelCache, run_source
from vsr.errors import ConfigError, Interrupted, OutputError
from vsr.io.image import ImageSink, is_image_path
from vsr.io.output import check_output_path
from vsr.io.sink import EncodeConfig, PyAVSink
from vsr.io.source import check_input_path, first_frames_end, open_source
from vsr.loading import dtype_name
from vsr.options import (
    DECODERS,
    ENCODERS,
    RunOptions,
    as_path,
    check_at_least,
    check_callable,
    check_choice,
    check_type,
)
from vsr.pipeline import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscaleConfig(RunOptions):
    """One upscale run: ``input`` and ``output`` paths, the model options of
    :class:`vsr.options.RunOptions` (model, scale, device, precision, tile, backend, batch,
    all keyword-only) and the encoding; ``audio`` False leaves every audio stream out (the
    other streams still copied); ``frames``: only the first N frames are upscaled (a
    preview), every other stream cut where they end (PyAV encoder only). Validated on
    construction (ConfigError)."""

    input: Path
    output: Path
    tile_overlap: int = 16
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    decoder: str = "pyav"
    deinterlace: bool = True  # interlaced input (see vsr.io.source.Deinterlacer)
    encoder: str = "pyav"
    overwrite: bool = False
    queue_depth: int = 2
    audio: bool = True  # False: every audio stream left out (vsr upscale --no-audio)
    frames: int | None = None  # only the first N frames (vsr upscale --frames)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", as_path("input", self.input))
        object.__setattr__(self, "output", as_path("output", self.output))
        super().__post_init__()
        check_type("encode", self.encode, EncodeConfig)
        check_choice("decoder", self.decoder, DECODERS)
        check_choice("encoder", self.encoder, ENCODERS)
        check_at_least("queue_depth", self.queue_depth, 1)
        check_at_least("tile_overlap", self.tile_overlap, 0)
        check_at_least("frames", self.frames, 1, optional=True)
        if self.frames is not None and self.encoder == "ffmpeg":
            raise ConfigError("frames (--frames) needs encoder pyav, not ffmpeg: the ffmpeg "
                              "program copies the input's other streams whole")


@dataclass(frozen=True)
class UpscaleResult:
    """What one run did and with what (``vsr upscale --json``)."""

    frames_in: int
    frames_out: int
    seconds: float
    fps: float
    output: str
    input: str
    model: str
    scale: int
    device: str
    precision: str  # the precision the run ended in
    fallback_fp32: bool
    fallback_frames: int
    tile: int | None
    width: int
    height: int
    codec: str | None
    pix_fmt: str | None
    copied_packets: dict[int, int]
    notes: tuple[str, ...] = ()
    backend: str = "eager"  # the backend the run used (after any fallback)
    batch: int = 1  # frames per model call in the run (at most the frames there are)
    frames_reused: int = 0  # repeats of the frame before, not computed again

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["copied_packets"] = {str(k): v for k, v in self.copied_packets.items()}
        d["notes"] = list(self.notes)
        return d


def writes_picture(info, output) -> bool:
    """Whether the input ``info`` is written as a picture to ``output``: a picture input is
    (a video name is refused by the picture sink), but a one-picture GIF is a one-frame
    video where a video is asked for."""
    return info.is_image and (is_image_path(output) or info.container != "gif")


def open_sink(config: UpscaleConfig, info, width: int, height: int):
    """The sink ``config`` asks for: an image for an image input, else PyAV or ffmpeg."""
    if writes_picture(info, config.output):
        return ImageSink(config.output, width, height, overwrite=config.overwrite,
                         input_path=str(config.input), info=info)
    if is_image_path(config.output):
        what = "an animated picture" if info.container in ("apng", "gif") else "a video input"
        raise OutputError(f"{what} needs a video output, not {config.output.name}")
    if config.encoder == "ffmpeg":
        from vsr.io.ffmpeg_sink import FfmpegSink

        return FfmpegSink(config.output, info, width, height, config.encode,
                          overwrite=config.overwrite, audio=config.audio)
    cut = config.frames is not None
    return PyAVSink(config.output, info, width, height, config.encode, overwrite=config.overwrite,
                    audio=config.audio, cut_at_video_end=cut,
                    chapters_until=first_frames_end(info, config.frames) if cut else None)


def _unused_encoding(config: UpscaleConfig) -> tuple[str, ...]:
    """The note (logged as a warning) that the encoding settings ``config`` gives other than
    the defaults are not used, its output being a picture; () when it gives none."""
    default = EncodeConfig()
    given = [f"{f.name} {getattr(config.encode, f.name)}" for f in fields(EncodeConfig)
             if getattr(config.encode, f.name) != getattr(default, f.name)]
    if not given:
        return ()
    note = (f"encoding settings {', '.join(given)} are not used for a picture "
            f"({config.output.name})")
    log.warning("%s", note)
    return (note,)


def upscale_file(config: UpscaleConfig, progress: Callable[[Progress], None] | None = None, *,
                 models: ModelCache | None = None) -> UpscaleResult:
    """Upscale ``config.input`` into ``config.output``; the output appears only when complete.

    ``progress`` is called from the calling thread; ``models`` reuses loaded models and
    prepared backends across calls (a batch worker's; one may serve several threads at
    once, see :class:`vsr.engine.ModelCache`). Raises InputError, OutputError,
    ModelError, ConfigError, PipelineError, or Interrupted on Ctrl-C; in every failure case no
    output file is left behind.
    """
    check_type("config", config, UpscaleConfig)
    check_callable("progress", progress)
    check_type("models", models, ModelCache, optional=True)
    run = None
    try:  # a Ctrl-C from the first check to the input's close is Interrupted
        check_input_path(config.input)
        check_output_path(config.output, overwrite=config.overwrite, input_path=config.input)
        device = resolve_device(config.device, require_available=True)
        t0 = time.perf_counter()
        with open_source(config.input, config.decoder,
                         deinterlace=config.deinterlace) as source:
            is_image = writes_picture(source.info, config.output)
            unused = _unused_encoding(config) if is_image else ()
            frames, total = None, None
            if config.frames is not None:  # the first N (a preview of a long file)
                frames = itertools.islice(source.frames(), config.frames)
                total = min(config.frames, source.info.frames or config.frames)
            run = run_source(source, config, device,
                             lambda info, w, h: open_sink(config, info, w, h), models=models,
                             frames=frames, frames_total=total, depth=config.queue_depth,
                             overlap=config.tile_overlap, progress=progress)
    except KeyboardInterrupt as exc:
        if run is not None:  # while the input closed, the output complete
            raise Interrupted(f"interrupted; the output was written: {config.output}") from exc
        raise Interrupted("interrupted; no output was written") from exc
    seconds = time.perf_counter() - t0
    stats, report, handle = run.stats, run.report, run.prepared.handle
    return UpscaleResult(
        frames_in=stats.frames_in, frames_out=stats.frames_out, seconds=round(seconds, 3),
        fps=round(stats.frames_out / seconds, 3) if seconds else 0.0, output=str(config.output),
        input=str(config.input), model=handle.name, scale=handle.scale, device=str(device),
        precision=dtype_name(run.dtype), fallback_fp32=report.fell_back_to_fp32,
        fallback_frames=report.fallback_frames, tile=report.tile, width=run.width,
        height=run.height, codec=None if is_image else config.encode.codec, pix_fmt=run.pix_fmt,
        copied_packets=run.copied_packets,
        notes=unused + run.prepared.notes + tuple(report.notes),
        backend=run.prepared.backend, batch=run.prepared.options.batch,
        frames_reused=report.reused_frames,
    )
