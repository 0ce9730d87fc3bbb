"""`vsr bench`: fps of decode, model, encode, the pipeline and a serial loop on one input."""

from __future__ import annotations

import click

from vsr.cli.common import (
    device_option,
    emit_json,
    json_option,
    model_option,
    precision_option,
    scale_option,
)


@click.command()
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="The video to measure on.")
@model_option()
@scale_option
@device_option
@precision_option
@click.option("--frames", type=click.IntRange(min=2), default=30, show_default=True,
              help="How many frames each measurement runs over.")
@click.option("--tile", type=click.IntRange(min=32), default=None)
@click.option("--codec", default="libx264", show_default=True)
@click.option("--crf", type=click.IntRange(0, 63), default=None)
@click.option("--preset", default=None)
@click.option("--decoder", type=click.Choice(["pyav", "decord"]), default="pyav",
              show_default=True)
@click.option("--backend", "backends", default="auto", show_default=True,
              help="Backend, or several separated by commas to measure side by side "
                   "(eager, compile, tensorrt, onnx, auto).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames per model call.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pipeline and serial runs, alternated; their medians are reported.")
@json_option
def bench(input_path: str, model: str | None, scale: int | None, device: str, precision: str,
          frames: int, tile: int | None, codec: str, crf: int | None, preset: str | None,
          decoder: str, backends: str, batch: int, repeats: int, as_json: bool) -> None:
    """Measure decode-only, model-only, encode-only, pipeline and serial-loop throughput.

    With several backends, each is measured in turn; --json then prints
    {"backends": [one object per backend]}, and one backend keeps the single object.
    """
    from vsr.backends import parse_backends
    from vsr.bench import BenchConfig, run_bench
    from vsr.io.sink import EncodeConfig

    names = parse_backends(backends)
    results = []
    for name in names:
        if len(names) > 1:
            click.echo(f"backend {name}:", err=True)
        config = BenchConfig(input=input_path, model=model, scale=scale, device=device,
                             precision=precision, frames=frames, tile=tile, decoder=decoder,
                             encode=EncodeConfig(codec=codec, crf=crf, preset=preset),
                             backend=name, batch=batch, repeats=repeats)
        result = run_bench(config, lambda stage, fps: click.echo(f"{stage:>9}: {fps:8.2f} fps",
                                                                 err=True))
        results.append(result)
        click.echo(f"pipeline {result.pipeline_fps:.2f} fps vs serial {result.serial_fps:.2f} fps "
                   f"({result.pipeline_fps / result.serial_fps:.2f}x; CPU "
                   f"{result.pipeline_cpu_ms:.0f} vs {result.serial_cpu_ms:.0f} ms/frame); backend "
                   f"{result.backend} prepared in {result.prepare_seconds:.1f} s", err=True)
    if as_json:
        rows = [{**r.to_json(), "requested": name} for r, name in zip(results, names,
                                                                       strict=True)]
        emit_json(rows[0] if len(rows) == 1 else {"backends": rows})
