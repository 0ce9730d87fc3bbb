"""`vsr export`: write a model as ONNX, TorchScript or a TensorRT program."""

from __future__ import annotations

import click

from vsr.cli.common import (
    PrecisionChoice,
    device_option,
    emit_json,
    json_option,
    model_option,
    scale_option,
)
from vsr.options import EXPORT_FORMATS


@click.command()
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS),
              required=True, help="onnx: dynamic batch/height/width; torchscript: traced; "
                                  "tensorrt: static shape (torch-tensorrt, CUDA).")
@model_option()
@scale_option
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="The file to write: .onnx (onnx), .pt, .ts or .pth (torchscript), .ep "
                   "(tensorrt).")
@click.option("--height", type=click.IntRange(min=1), default=None,
              help="Input height traced [default: 32]; the onnx or torchscript file takes any "
                   "height. TensorRT: the engine's fixed input height [default: 540].")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Input width traced [default: 32]; the onnx or torchscript file takes any "
                   "width. TensorRT: the engine's fixed input width [default: 960].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Input batch traced (TensorRT: the engine's fixed batch).")
@click.option("--precision", type=PrecisionChoice(), default="auto", show_default=True,
              help="auto: fp16 for tensorrt, fp32 otherwise (onnx is fp32 only).")
@device_option
@click.option("--no-check", is_flag=True,
              help="Do not run the exported file against the eager model.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@json_option
def export(fmt: str, model: str | None, scale: int | None, output: str, height: int | None,
           width: int | None, batch: int, precision: str, device: str, no_check: bool,
           overwrite: bool, as_json: bool) -> None:
    """Export a model (registry name or checkpoint path) for other runtimes."""
    from vsr.export import ExportConfig, export_model

    result = export_model(ExportConfig(
        model=model, format=fmt, output=output, scale=scale, height=height, width=width,
        batch=batch, precision=precision, device=device, overwrite=overwrite,
        check=not no_check))
    if as_json:
        emit_json(result.to_json())
    else:
        err = "not checked" if result.max_error is None else f"max |error| {result.max_error:.1e}"
        takes = " x ".join(map(str, result.shape))
        click.echo(f"{result.format} {result.model} x{result.scale} ({result.precision}) -> "
                   f"{result.output}, {result.bytes / 1e6:.1f} MB, input {takes}, {err}",
                   err=True)
