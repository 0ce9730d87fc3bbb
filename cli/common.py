"""Options shared by several commands, as reusable decorators, and JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click


def emit_json(obj: dict[str, Any]) -> None:
    """Write one JSON object on stdout (the --json contract); everything else goes to stderr."""
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout; logs go to stderr.")(f)


def model_option(default: str | None = None) -> Callable:
    def deco(f: Callable) -> Callable:
        return click.option(
            "--model", "-m", default=default, show_default=default is not None,
            help="Registry name, path to a .safetensors checkpoint, or 'bicubic'.")(f)
    return deco


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True,
                        help="auto, cpu, cuda or cuda:N.")(f)


def precision_option(f: Callable) -> Callable:
    return click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
                        default="auto", show_default=True,
                        help="Compute precision (auto: fp16 on CUDA when the model allows).")(f)


def scale_option(f: Callable) -> Callable:
    return click.option("--scale", "-s", type=click.IntRange(min=2), default=None,
                        help="Upscaling factor (default: the model's own; needed for bicubic).")(f)


def backend_option(f: Callable) -> Callable:
    """--backend for one run (upscale); bench takes a comma-separated list instead."""
    from vsr.backends import CHOICES

    return click.option(
        "--backend", type=click.Choice(CHOICES), default="auto", show_default=True,
        help="Inference backend; auto: the fastest one here that matches eager on the "
             "first frame (tensorrt > compile > eager on CUDA, onnx > eager on the CPU).")(f)


def batch_option(f: Callable) -> Callable:
    return click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Frames per model call.")(f)
