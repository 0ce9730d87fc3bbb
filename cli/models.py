"""`vsr models`: the registry with sizes, cost, weights and measured quality."""

from __future__ import annotations

import click

from vsr.cli.common import emit_json, json_option


@click.command("models")
@json_option
def models(as_json: bool) -> None:
    """List the registry: name, scale, parameters, multiply-adds, weights, quality, CPU speed.

    Quality and speed come from the model cards (models/weights/NAME.json); CPU s/720p is
    seconds per 1280x720 output frame on one thread."""
    from vsr.models import REGISTRY, describe_registry

    rows = describe_registry()
    for spec in REGISTRY:  # a model that cannot be used says why, on stderr
        if spec.card_problem is not None:
            click.echo(f"Warning: {spec.card_problem}", err=True)
    if as_json:
        emit_json({"models": rows})
        return
    w = max(len("name"), *(len(r["name"]) for r in rows))
    click.echo(f"{'name':<{w}} {'scale':>5} {'params':>11} {'GMACs@96':>9} {'GMACs@720p':>10} "
               f"{'weights':>8}  {'PSNR Set5/Set14/B100':<20} {'CPU s/720p':>10}")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        card = r.get("card", {})
        psnr = [card.get("eval", {}).get(s, {}).get("psnr") for s in ("Set5", "Set14", "B100")]
        quality = "/".join(f"{q:.2f}" for q in psnr) if None not in psnr else "-"
        speed = card.get("cpu_speed", {}).get("s_per_frame_720p_out_1_thread")
        speed_text = f"{speed:.2f}" if speed is not None else "-"
        # shipped weights that are not usable say why: a missing or corrupt file is not "no"
        problem = REGISTRY.get(r["name"]).weights_problem()
        weights = "yes" if problem is None else "no" if problem == "none" else problem
        click.echo(f"{r['name']:<{w}} {r['scale']:>5} {r['params']:>11,} "
                   f"{r['macs_96'] / 1e9:>9.1f} {r['macs_720p'] / 1e9:>10.1f} "
                   f"{weights:>8}  {quality:<20} {speed_text:>10}{mark}")
