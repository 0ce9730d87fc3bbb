"""`vsr bench`: fps of decode, model, encode, the pipeline and a serial loop on one input."""

from __future__ import annotations

import click

from vsr.cli.common import (
    batch_option,
    decoder_option,
    emit_json,
    encode_config,
    encode_options,
    json_option,
    model_options,
)
from vsr.options import BACKEND_CHOICES


@click.command()
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="The video to measure on.")
@model_options(backend=False)
@click.option("--frames", type=click.IntRange(min=2), default=30, show_default=True,
              help="How many frames each measurement runs over.")
@encode_options()
@decoder_option
@click.option("--backend", "backends", default="auto", show_default=True,
              help="Backend, or several separated by commas to measure side by side "
                   f"({', '.join(BACKEND_CHOICES)}).")
@batch_option
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pipeline and serial runs, alternated; their medians are reported.")
@click.option("--output", "output_path", default=None, type=click.Path(dir_okay=False),
              help="Also keep the first pipeline run's video here (video only; one backend).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@json_option
def bench(input_path: str, model: str | None, scale: int | None, device: str, precision: str,
          tile: int | None, deflicker: float,
          frames: int, codec: str, crf: int | None, preset: str | None,
          pix_fmt: str | None, decoder: str, backends: str, batch: int, repeats: int,
          output_path: str | None, overwrite: bool, as_json: bool) -> None:
    """Measure decode-only, model-only, encode-only, pipeline and serial-loop throughput.

    With several backends, each is measured in turn; --json then prints
    {"backends": [one object per backend]}, and one backend keeps the single object.
    """
    from vsr.backends import parse_backends
    from vsr.bench import BenchConfig, run_bench

    names = parse_backends(backends)
    if output_path is not None and len(names) > 1:
        raise click.BadParameter("--output keeps one run's video: give one backend",
                                 param_hint="--output")
    results = []
    for name in names:
        if len(names) > 1:
            click.echo(f"backend {name}:", err=True)
        config = BenchConfig(input=input_path, model=model, scale=scale, device=device,
                             precision=precision, frames=frames, tile=tile, decoder=decoder,
                             encode=encode_config(codec, crf, preset, pix_fmt),
                             backend=name, batch=batch, deflicker=deflicker,
                             repeats=repeats, output=output_path, overwrite=overwrite)
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
