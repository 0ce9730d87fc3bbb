"""The library entry for the main job: one video (or image) file in, upscaled file out.

    result = upscale_file(UpscaleConfig(input="in.mp4", output="out.mkv", model="bicubic",
                                        scale=2), progress=print)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vsr.device import resolve_device
from vsr.errors import ConfigError, Interrupted, OutputError
from vsr.io.image import ImageSink, is_image_path
from vsr.io.output import check_output_path
from vsr.io.sink import EncodeConfig, PyAVSink
from vsr.io.source import check_input_path, open_source
from vsr.pipeline import Progress, make_processor, run_pipeline

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class UpscaleConfig:
    """Everything one upscale run needs; validated on construction (ConfigError)."""

    input: Path
    output: Path
    model: str | None = None  # registry name, .safetensors path or "bicubic"; None: default
    scale: int | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    tile_overlap: int = 16
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    decoder: str = "pyav"
    encoder: str = "pyav"
    overwrite: bool = False
    queue_depth: int = 2
    backend: str = "auto"  # vsr.backends.CHOICES: eager, compile, tensorrt, onnx or auto
    batch: int = 1  # frames per model call

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Path(self.input))
        object.__setattr__(self, "output", Path(self.output))
        if self.precision not in ("auto", *PRECISIONS):
            raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, not {self.precision!r}")
        if self.decoder not in ("pyav", "decord"):
            raise ConfigError(f"decoder must be pyav or decord, not {self.decoder!r}")
        if self.encoder not in ("pyav", "ffmpeg"):
            raise ConfigError(f"encoder must be pyav or ffmpeg, not {self.encoder!r}")
        if self.tile is not None and self.tile < 32:
            raise ConfigError(f"tile must be at least 32 px, got {self.tile}")
        if self.scale is not None and self.scale < 2:
            raise ConfigError(f"scale must be at least 2, got {self.scale}")
        if self.queue_depth < 1:
            raise ConfigError("queue_depth must be at least 1")
        from vsr.backends import CHOICES

        if self.backend not in CHOICES:
            raise ConfigError(f"backend must be one of {', '.join(CHOICES)}, "
                              f"not {self.backend!r}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        resolve_device(self.device)  # validates the spelling; availability checked at run


@dataclass(frozen=True)
class UpscaleResult:
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
    batch: int = 1

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["copied_packets"] = {str(k): v for k, v in self.copied_packets.items()}
        d["notes"] = list(self.notes)
        return d


def resolve_precision(precision: str, handle) -> torch.dtype:
    """auto: fp16 on CUDA when the model supports it, else fp32; raises ConfigError."""
    supported = tuple(getattr(handle, "supported_dtypes", (torch.float32,)))
    if precision == "auto":
        on_cuda = handle.device.type == "cuda"
        return torch.float16 if on_cuda and torch.float16 in supported else torch.float32
    dtype = PRECISIONS[precision]
    if dtype != torch.float32 and dtype not in supported:
        raise ConfigError(f"{handle.name} does not support {precision}")
    return dtype


def load_handle(model: str | None, scale: int | None, device: torch.device, precision: str):
    """Load the model through the registry and put it in the run's precision."""
    from vsr.models import DEFAULT_MODEL, load_model

    handle = load_model(model or DEFAULT_MODEL, scale=scale, device=str(device))
    if scale is not None and handle.scale != scale:
        raise ConfigError(f"{handle.name} upscales x{handle.scale}, not x{scale}")
    return handle.to(dtype=resolve_precision(precision, handle))


def open_sink(config: UpscaleConfig, info, width: int, height: int):
    if info.is_image:
        return ImageSink(config.output, width, height, overwrite=config.overwrite,
                         input_path=str(config.input))
    if is_image_path(config.output):
        raise OutputError(f"a video input needs a video output, not {config.output.name}")
    if config.encoder == "ffmpeg":
        from vsr.io.ffmpeg_sink import FfmpegSink

        return FfmpegSink(config.output, info, width, height, config.encode,
                          overwrite=config.overwrite)
    return PyAVSink(config.output, info, width, height, config.encode, overwrite=config.overwrite)


def prepare_frames(frames, handle, config: UpscaleConfig):
    """Peek at the first frame and prepare ``config.backend`` on it (checked against eager
    there); returns the frames (first one included) and the Runner, or None with tiles
    (which always run eagerly) or an empty input."""
    first = next(frames, None)
    if first is None:
        return iter(()), None
    frames = itertools.chain([first], frames)
    if config.tile:
        if config.backend not in ("auto", "eager"):
            log.warning("--tile runs the model eagerly; --backend %s is not used",
                        config.backend)
        return frames, None
    from vsr.backends import prepare_for_frame

    return frames, prepare_for_frame(handle, config.backend, first.image, batch=config.batch)


def upscale_file(config: UpscaleConfig,
                 progress: Callable[[Progress], None] | None = None) -> UpscaleResult:
    """Upscale ``config.input`` into ``config.output``; the output appears only when complete.

    Raises InputError, OutputError, ModelError, ConfigError, PipelineError, or Interrupted on
    Ctrl-C; in every failure case no output file is left behind.
    """
    check_input_path(config.input)
    check_output_path(config.output, overwrite=config.overwrite, input_path=config.input)
    device = resolve_device(config.device, require_available=True)
    t0 = time.perf_counter()
    with open_source(config.input, config.decoder) as source:
        info = source.info
        handle = load_handle(config.model, config.scale, device, config.precision)
        width, height = info.width * handle.scale, info.height * handle.scale
        frames, runner = prepare_frames(source.frames(), handle, config)
        processor = make_processor(handle, tile=config.tile, overlap=config.tile_overlap,
                                   runner=runner, batch=config.batch)
        log.info("%s %dx%d -> %dx%d with %s x%d on %s (%s)", config.input.name, info.width,
                 info.height, width, height, handle.name, handle.scale, device, handle.dtype)
        try:
            with open_sink(config, info, width, height) as sink:
                stats = run_pipeline(frames, processor, sink, depth=config.queue_depth,
                                     frames_total=info.frames, progress=progress)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; no output was written") from exc
    seconds = time.perf_counter() - t0
    report = processor.report
    return UpscaleResult(
        frames_in=stats.frames_in, frames_out=stats.frames_out, seconds=round(seconds, 3),
        fps=round(stats.frames_out / seconds, 3) if seconds else 0.0, output=str(config.output),
        input=str(config.input), model=handle.name, scale=handle.scale, device=str(device),
        precision=str(handle.dtype).removeprefix("torch."), fallback_fp32=report.fell_back_to_fp32,
        fallback_frames=report.fallback_frames, tile=report.tile, width=width, height=height,
        codec=None if info.is_image else config.encode.codec, pix_fmt=sink.pix_fmt,
        copied_packets=sink.copied_packets,
        notes=tuple(runner.notes if runner else ()) + tuple(report.notes),
        backend=runner.backend if runner else "eager", batch=config.batch,
    )
