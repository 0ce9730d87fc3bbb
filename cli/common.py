"""Options shared by several commands, as reusable decorators, and JSON output.

Choice lists come from the library's own constants (vsr.options and the configs), so the CLI
offers exactly what the configs accept. The help texts are written once, here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from vsr.options import (
    BACKEND_CHOICES,
    DECODERS,
    ENCODERS,
    MAX_SCALE,
    MIN_TILE,
    PRECISION_ALIASES,
    PRECISIONS,
)

Decorator = Callable[[Callable], Callable]


def emit_json(obj: dict[str, Any]) -> None:
    """Write one JSON object on stdout (the --json contract); everything else goes to stderr."""
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout; logs go to stderr.")(f)


def _stack(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` so that --help lists them in the order given."""
    def deco(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return deco


def model_option(default: str | None = None) -> Decorator:
    def deco(f: Callable) -> Callable:
        return click.option(
            "--model", "-m", default=default, show_default=default is not None,
            help="Registry name, path to a .safetensors checkpoint, or 'bicubic'.")(f)
    return deco


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu, cuda or cuda:N.")(f)


class PrecisionChoice(click.Choice):
    """One of PRECISIONS, or the torch name --json gives (float32, float16, bfloat16) as its
    short name, so that a JSON value can be fed back (vsr.options.PRECISION_ALIASES)."""

    def __init__(self) -> None:
        super().__init__(PRECISIONS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, str):
            value = PRECISION_ALIASES.get(value, value)
        return super().convert(value, param, ctx)


def precision_option(f: Callable) -> Callable:
    return click.option("--precision", type=PrecisionChoice(), default="auto",
                        show_default=True,
                        help="Compute precision (also float32, float16, bfloat16, as --json "
                             "names them). auto: fp16 on CUDA; bf16 for a network on a "
                             "CPU with bf16 instructions (AVX512-BF16, AMX) and input frames of "
                             "50,000 pixels or more; fp32 otherwise, and for frames deeper than "
                             "the reduced precision carries (bf16: up to 8-bit frames, fp16: "
                             "up to 10-bit).")(f)


def scale_option(f: Callable) -> Callable:
    return click.option("--scale", "-s", type=click.IntRange(min=2, max=MAX_SCALE),
                        default=None,
                        help="Upscaling factor (default: the model's own; needed for bicubic).")(f)


def tile_option(f: Callable) -> Callable:
    return click.option("--tile", type=click.IntRange(min=MIN_TILE), default=None,
                        help="Infer in tiles of N px (with overlap); automatic on CUDA "
                             "out-of-memory.")(f)


def backend_option(f: Callable) -> Callable:
    """--backend for one run; bench takes a comma-separated list instead."""
    return click.option(
        "--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
        help="Inference backend; auto: the fastest one here that matches eager on the "
             "first frame (tensorrt > compile > eager on CUDA; on the CPU onnx for small "
             "frames, else eager).")(f)


def batch_option(f: Callable) -> Callable:
    return click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Frames per model call.")(f)


def deflicker_option(default: float = 0.0) -> Decorator:
    return click.option(
        "--deflicker", type=click.FloatRange(0.0, 1.0, max_open=True), default=default,
        show_default=True, metavar="S",
        help="Temporal filter strength in [0, 1), 0: off. Where the previous output still "
             "matches the new input frame, the two are blended (up to S of the previous), so "
             "codec noise the model sharpens stops flickering; moving content passes as the "
             "model made it. For compressed video (0.5: steadier than bicubic on all six "
             "shared clips at CRF 28, five of six at CRF 18); it blurs clean, finely moving "
             "detail.")


def model_options(*, device: bool = True, backend: bool = True,
                  deflicker: float = 0.0) -> Decorator:
    """--model --scale [--device] --precision --tile [--backend --batch] --deflicker: the fields
    of vsr.options.RunOptions (of ModelOptions with ``device=False``); ``deflicker`` is the
    command's default strength."""
    parts = [model_option(), scale_option, *([device_option] if device else []),
             precision_option, tile_option]
    if backend:
        parts += [backend_option, batch_option]
    return _stack(*parts, deflicker_option(deflicker))


def encode_options(*, preset_help: str = "Encoder preset (e.g. veryfast, slow).") -> Decorator:
    """--codec --crf --preset --pix-fmt: the fields of vsr.io.sink.EncodeConfig."""
    return _stack(
        click.option("--codec", default="libx264", show_default=True,
                     help="Video encoder: libx264, libx265, libsvtav1, ffv1, prores_ks, "
                          "h264_nvenc..."),
        click.option("--crf", type=click.IntRange(0, 63), default=None,
                     help="Constant quality, lower is better: 0..51 for libx264 and libx265, "
                          "0..63 for libvpx-vp9, libsvtav1 and libaom-av1 (default: the "
                          "encoder's own, 23 for libx264)."),
        click.option("--preset", default=None, help=preset_help),
        click.option("--pix-fmt", default=None,
                     help="Output pixel format (default: the input's depth where the codec "
                          "allows)."),
    )


def progress_option(what: str = "Progress line on stderr") -> Decorator:
    """--progress/--no-progress, None when neither is given: see :func:`wants_progress`."""
    return click.option("--progress/--no-progress", default=None,
                        help=f"{what} (default: when stderr is a terminal).")


def wants_progress(progress: bool | None) -> bool:
    """Whether to show progress: as --progress/--no-progress say, else when stderr is a
    terminal (a log file or CI would get a line per update)."""
    return sys.stderr.isatty() if progress is None else progress


def decoder_option(f: Callable) -> Callable:
    return click.option("--decoder", type=click.Choice(DECODERS), default="pyav",
                        show_default=True, help="Frame reader.")(f)


def deinterlace_option(f: Callable) -> Callable:
    return click.option("--deinterlace/--no-deinterlace", default=True, show_default=True,
                        help="Interlaced input: one progressive frame per frame (bwdif) "
                             "before the model; without, its combing is upscaled too.")(f)


def audio_option(f: Callable) -> Callable:
    """--no-audio: every audio stream left out (as vsr stream's), for an output whose container
    cannot carry the input's audio (AAC in WebM or GIF)."""
    return click.option("--no-audio", "no_audio", is_flag=True,
                        help="Leave every audio stream out (the other streams are still "
                             "copied): for a container that cannot carry the input's audio, "
                             "e.g. AAC in .webm or .gif.")(f)


def encoder_option(f: Callable) -> Callable:
    return click.option("--encoder", type=click.Choice(ENCODERS), default="pyav",
                        show_default=True, help="ffmpeg: pipe to the system ffmpeg program.")(f)


def encode_config(codec: str, crf: int | None, preset: str | None, pix_fmt: str | None):
    """The EncodeConfig of :func:`encode_options`' values (raises ConfigError)."""
    from vsr.io.sink import EncodeConfig

    return EncodeConfig(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
