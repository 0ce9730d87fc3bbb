"""`vsr models`: the registry with sizes, cost, weights and measured quality."""

from __future__ import annotations

import click

from vsr.cli.common import emit_json, json_option


@click.command("models")
@json_option
def models(as_json: bool) -> None:
    """List the registry: name, scale, parameters, multiply-adds, weights, quality."""
    from vsr.models import describe_registry

    rows = describe_registry()
    if as_json:
        emit_json({"models": rows})
        return
    click.echo(f"{'name':<16} {'scale':>5} {'params':>11} {'GMACs@96':>9} {'GMACs@720p':>10} "
               f"{'weights':>8}  quality (Set5 PSNR)")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        q = r.get("card", {}).get("eval", {}).get("Set5", {}).get("psnr")
        quality = f"{q:.2f} dB" if q is not None else "-"
        click.echo(f"{r['name']:<16} {r['scale']:>5} {r['params']:>11,} "
                   f"{r['macs_96'] / 1e9:>9.1f} {r['macs_720p'] / 1e9:>10.1f} "
                   f"{'yes' if r['pretrained'] else 'no':>8}  {quality}{mark}")
