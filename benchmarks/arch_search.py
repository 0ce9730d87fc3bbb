"""Choose DRN widths and depths by measured quality per CPU second (issue 18, item 4).

``time``: for grids of DRN constructor arguments, build each network (random weights: time
does not depend on them), count parameters and mult-adds per 720p output frame
(``vsr.models.complexity``), and time it per 720p output frame exactly as
``benchmarks/peers.py`` times models (its ``speed``: the model handle's ``upscale``, i.e.
eager, inference mode, uint8 in and out, round robin with a warm-up), interleaved in the same
run with SPAN x2/x4 ch48, the shipped drn-t models and any checkpoints, so every ratio to SPAN
comes from one run:

    python benchmarks/arch_search.py time --threads 2 --repeats 5 \
        --grid "scale=4 n_feats=8 n_blocks=8:0,12:0,16:0 up_widths=-,-:16,-:8" \
        --json benchmarks/arch_search_x4.json --markdown benchmarks/ARCH_SEARCH.md

A grid is a product of axes ``NAME=V1,V2,...`` (scale, n_feats, n_blocks, up_widths,
down_widths); a per-stage value is its stages joined by ``:``; ``-`` is the constructor's
default (for the whole list or one stage).

``grow``: weight surgery from a trained DRN checkpoint into a deeper one. Every tensor whose
shape is unchanged is copied; every added RCAB starts as the identity (its conv2 is zero, so
the block adds 0 to its input) and so the grown network computes what the source did. Narrower
widths are not this command's job: prune them first with ``vsr compress --stage prune
--widths-from SEARCH.json`` (dual regression pruning with least-squares refits).

    python benchmarks/arch_search.py grow --checkpoint runs/arch_prune/pruned.safetensors \
        --n-blocks 14:0 --out runs/arch/grown.safetensors --verify ../shared/data/benchmark/Set5

A grown network is off the registry; ``vsr train --init runs/arch/grown.safetensors`` (no
``--arch``) trains it from there, taking its architecture from the file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr.errors import ConfigError, VsrError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("arch_search")

REPO = Path(__file__).resolve().parents[1]
AXES = ("scale", "n_feats", "n_blocks", "up_widths", "down_widths")
PER_STAGE = ("n_blocks", "up_widths", "down_widths")
SHIPPED = ("drn-t-x2", "drn-t-x2-drc50", "drn-t-x4")
DATASETS = ("Set5", "Set14", "B100")


def _peers():
    """benchmarks/peers.py as a module (benchmarks/ is not a package)."""
    name = "vsr_bench_peers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "peers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------
# Grids: pure parsing and naming.


def _int(text: str, what: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ConfigError(f"{what}: {text!r} is not a non-negative integer")
    return int(text)


def _value(axis: str, text: str) -> Any:
    """One value of an axis: an int, or for a per-stage axis a list of ints/None (``-``), or
    None for the constructor's default."""
    if text == "-":
        if axis in ("scale", "n_feats"):
            raise ConfigError(f"{axis} needs a value, not '-'")
        return None
    if axis not in PER_STAGE:
        return _int(text, axis)
    return [None if s == "-" else _int(s, axis) for s in text.split(":")]


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """``"scale=4 n_feats=8,12 n_blocks=8:0,12:0"`` -> one settings dict per point of the
    product of the axes, in order (the last axis varies fastest). ``scale`` is required.
    Raises ConfigError for an unknown or repeated axis, an empty value or a bad number."""
    axes: dict[str, list[Any]] = {}
    for part in spec.split():
        name, sep, values = part.partition("=")
        if not sep or not values:
            raise ConfigError(f"grid axis {part!r}: expected NAME=V1,V2,...")
        if name not in AXES:
            raise ConfigError(f"unknown grid axis {name!r}; known: {', '.join(AXES)}")
        if name in axes:
            raise ConfigError(f"grid axis {name!r} given twice")
        if any(v == "" for v in values.split(",")):
            raise ConfigError(f"grid axis {name!r}: empty value in {values!r}")
        axes[name] = [_value(name, v) for v in values.split(",")]
    if "scale" not in axes:
        raise ConfigError(f"grid {spec!r} has no scale axis")
    names = list(axes)
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*axes.values())]


def resolve(settings: dict[str, Any]) -> dict[str, Any]:
    """DRN constructor kwargs from one grid point: every ``-`` replaced by the constructor's
    default, so the kwargs are explicit. The defaults are DRN's own: its signature's (n_feats,
    n_blocks) and the stage widths a block-less DRN of that scale and n_feats builds."""
    import inspect

    from vsr.models.drn import DRN

    params = inspect.signature(DRN).parameters
    scale = settings["scale"]
    nf = settings.get("n_feats") or params["n_feats"].default
    hp = DRN(scale=scale, n_feats=nf, n_blocks=0).hparams  # ConfigError on a bad scale
    phase = len(hp["up_widths"])
    defaults = {"n_blocks": [params["n_blocks"].default] * phase,
                "up_widths": hp["up_widths"], "down_widths": hp["down_widths"]}
    kwargs: dict[str, Any] = {"scale": scale, "n_feats": nf}
    for axis in PER_STAGE:
        value = settings.get(axis)
        if value is None:
            kwargs[axis] = list(defaults[axis])
            continue
        if len(value) != phase:
            raise ConfigError(f"{axis} {':'.join('-' if v is None else str(v) for v in value)}"
                              f" needs one entry per stage ({phase} at x{scale})")
        kwargs[axis] = [d if v is None else v for v, d in zip(value, defaults[axis], strict=True)]
    return kwargs


def config_name(kwargs: dict[str, Any]) -> str:
    """A short unique name: ``x4-nf8-b12.0-up32.8-dn8.16``."""
    def join(values: Sequence[int]) -> str:
        return ".".join(str(v) for v in values)

    return (f"x{kwargs['scale']}-nf{kwargs['n_feats']}-b{join(kwargs['n_blocks'])}"
            f"-up{join(kwargs['up_widths'])}-dn{join(kwargs['down_widths'])}")


def grid_configs(specs: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, kwargs) of every point of every grid, first occurrence kept."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for settings in parse_grid(spec):
            kwargs = resolve(settings)
            out.setdefault(config_name(kwargs), kwargs)
    return list(out.items())


def parse_named(text: str, what: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"{what} {text!r}: expected NAME=PATH")
    return name, Path(path)


# ---------------------------------------------------------------------------------------------
# Timing.


def _drn_row(name: str, kind: str, module: torch.nn.Module) -> dict[str, Any]:
    from vsr.models import count_params, macs_720p

    hp = module.hparams
    drop = {"rgb_range", "reduction"} | (set() if _pruned_rcabs(hp) else {"rcab_widths"})
    return {"name": name, "kind": kind, "scale": int(module.scale),
            "kwargs": {k: v for k, v in hp.items() if k not in drop},
            "params": count_params(module), "macs_720p": macs_720p(module, module.scale)}


def _pruned_rcabs(hp: dict[str, Any]) -> bool:
    """Whether any RCAB is narrower than its stage's trunk (then its widths are part of the
    configuration, not implied by n_blocks)."""
    from vsr.models.drn import stage_channels

    chans = stage_channels(hp["scale"], hp["n_feats"])
    return any(w != chans[i] for i, ws in enumerate(hp["rcab_widths"]) for w in ws)


def build_rows(configs: Sequence[tuple[str, dict[str, Any]]], registry: Sequence[str],
               checkpoints: Sequence[tuple[str, Path]], scales: Sequence[int], threads: int,
               ) -> tuple[list[dict[str, Any]], list[tuple[str, Any]], list[str]]:
    """Rows (without times) and their handles: SPAN ch48 of each scale, the shipped registry
    models, checkpoints and grid networks."""
    from vsr.models import DRN, NetworkUpscaler, load_model

    peers = _peers()
    rows: list[dict[str, Any]] = []
    handles: list[tuple[str, Any]] = []
    entries, missing = peers.peer_entries(threads)
    for e in entries:
        if e.name == peers.REFERENCE.get(e.scale) and e.scale in scales:
            rows.append({"name": e.name, "kind": "peer", "scale": e.scale})
            handles.append((e.name, e.make()))
    for name in registry:
        h = load_model(name)
        rows.append(_drn_row(name, "shipped", h.module))
        handles.append((name, h))
    for name, path in checkpoints:
        h = load_model(path)
        row = _drn_row(name, "checkpoint", h.module)
        row["source"] = str(path)
        rows.append(row)
        handles.append((name, h))
    import torch

    torch.manual_seed(0)
    for name, kwargs in configs:
        module = DRN(**kwargs)
        rows.append(_drn_row(name, "grid", module))
        handles.append((name, NetworkUpscaler(name, module)))
    return rows, handles, [m for m in missing if m.startswith("span-x")]


def attach_quality(rows: list[dict[str, Any]], reports: Sequence[Path],
                   evals: Sequence[tuple[str, Path]]) -> None:
    """PSNR per dataset onto rows: from peers.py reports (rows with name and quality) and
    from ``vsr eval --json`` outputs given as NAME=FILE."""
    by_name = {r["name"]: r for r in rows}
    for path in reports:
        for old in json.loads(path.read_text())["rows"]:
            if old["name"] in by_name and old.get("quality"):
                by_name[old["name"]]["quality"] = {d: q["psnr"] for d, q in old["quality"].items()}
                by_name[old["name"]]["quality_from"] = str(path)
    for name, path in evals:
        if name not in by_name:
            raise ConfigError(f"--eval {name}: no row of that name")
        results = json.loads(path.read_text())["results"]
        by_name[name]["quality"] = {Path(r["dataset"]).name: r["psnr"] for r in results}
        by_name[name]["quality_from"] = str(path)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio_to_span: seconds over SPAN ch48's of the same scale (None without SPAN)."""
    reference = _peers().REFERENCE
    secs = {r["name"]: r.get("seconds_720p") for r in rows}
    for r in rows:
        ref = secs.get(reference.get(r["scale"]))
        r["ratio_to_span"] = (r["seconds_720p"] / ref
                              if ref and r.get("seconds_720p") is not None else None)


def table(report: dict[str, Any]) -> str:
    """The Markdown section of a ``time`` report: how it was made, then one table per scale,
    fastest first."""
    lines = [f"### Timing grid, {report['date']} UTC", "", "```", report["command"], "```", "",
             f"{report['threads']} threads for every model; seconds per 720p output frame (LR "
             "640x360 at x2, 320x180 at x4), wall clock, median of "
             f"{report['repeats']} round-robin calls after a warm-up (`benchmarks/peers.py` "
             "`speed`); CPU s: the process's CPU seconds per call (median), which load on the "
             "machine disturbs less than wall time; ratio to SPAN ch48 of the same scale from "
             "the wall medians. GMACs: "
             "mult-adds per 720p output frame (`vsr.models.macs_720p`). Grid rows have random "
             "weights (time does not depend on them)."]
    if "load_average" in report:
        before, after = report["load_average"]
        lines.append(f"Load average (1 min): {before:.2f} before the timing, {after:.2f} after.")
    datasets = [d for d in DATASETS if any(d in r.get("quality", {}) for r in report["rows"])]
    head = ["config", "kind", "params", "GMACs", "s / 720p", "fastest", "CPU s", "ratio to SPAN",
            *datasets]
    for scale in sorted({r["scale"] for r in report["rows"]}):
        lines += ["", f"x{scale}:", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        rows = [r for r in report["rows"] if r["scale"] == scale]
        for r in sorted(rows, key=lambda r: r.get("seconds_720p", math.inf)):
            params = f"{r['params'] / 1e3:.1f} k" if "params" in r else "-"
            macs = f"{r['macs_720p'] / 1e9:.1f}" if "macs_720p" in r else "-"
            secs = f"{r['seconds_720p']:.3f}" if "seconds_720p" in r else "-"
            fast = f"{r['fastest_seconds_720p']:.3f}" if "fastest_seconds_720p" in r else "-"
            cpu = f"{r['cpu_seconds_720p']:.3f}" if "cpu_seconds_720p" in r else "-"
            ratio = f"{r['ratio_to_span']:.2f}" if r.get("ratio_to_span") is not None else "-"
            q = [f"{r['quality'][d]:.2f}" if d in r.get("quality", {}) else "-"
                 for d in datasets]
            lines.append("| " + " | ".join([f"`{r['name']}`", r["kind"], params, macs, secs,
                                            fast, cpu, ratio, *q]) + " |")
    if report.get("missing"):
        lines += ["", "Not measured: " + "; ".join(report["missing"]) + "."]
    return "\n".join(lines) + "\n"


def cmd_time(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from vsr.hostmem import keep_freed_memory

    peers = _peers()
    keep_freed_memory()  # as the CLI runs on the CPU
    peers._configure_threads(args.threads)
    configs = grid_configs(args.grid or [])
    checkpoints = [parse_named(c, "--checkpoint") for c in args.checkpoint or []]
    evals = [parse_named(e, "--eval") for e in args.eval or []]
    registry = [n for n in (args.registry.split(",") if args.registry else []) if n]
    from vsr.models import REGISTRY, read_info

    scales = sorted({k["scale"] for _, k in configs} | {REGISTRY.get(n).scale for n in registry}
                    | {read_info(p).scale for _, p in checkpoints} | set(args.scale or []))
    rows, handles, missing = build_rows(configs, registry, checkpoints, scales, args.threads)
    report: dict[str, Any] = {
        "command": "python " + shlex.join([os.path.relpath(__file__, Path.cwd()), *argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": peers.machine(), "threads": args.threads, "repeats": args.repeats,
        "missing": missing}
    log.info("timing %d models, %d repeats", len(handles), args.repeats)
    before = os.getloadavg()[0]
    times = peers.speed(handles, repeats=args.repeats)
    report["load_average"] = [before, os.getloadavg()[0]]
    for r in rows:
        r.update(times[r["name"]])
    add_ratios(rows)
    attach_quality(rows, args.quality_from or [], evals)
    report["rows"] = rows
    text = table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        peers.write_section(args.markdown, args.section, text)
    sys.stdout.write(text)


# ---------------------------------------------------------------------------------------------
# Weight surgery.


def grown_hparams(hparams: dict[str, Any], n_blocks: Sequence[int],
                  up_widths: Sequence[int] | None = None) -> dict[str, Any]:
    """``hparams`` (a checkpoint's) with more RCABs per stage (new blocks at full trunk width,
    appended after the trained ones) and ``up_widths`` each either kept or folded to the
    projection's output width. Raises ConfigError when a stage would lose blocks or an
    up width can be reached by neither."""
    old = hparams["rcab_widths"]
    up = list(hparams["up_widths"]) if up_widths is None else list(up_widths)
    for what, values in (("n_blocks", n_blocks), ("up_widths", up)):
        if len(values) != len(old):
            raise ConfigError(f"{what} needs one entry per stage ({len(old)}), got {len(values)}")
    from vsr.models.drn import stage_channels, up_out_channels

    chans = stage_channels(hparams["scale"], hparams["n_feats"])
    rcab = []
    for i, (ws, n) in enumerate(zip(old, n_blocks, strict=True)):
        if n < len(ws):
            raise ConfigError(f"stage {i}: {n} blocks is fewer than the {len(ws)} trained ones; "
                              "growing only adds blocks")
        rcab.append(list(ws) + [chans[i]] * (n - len(ws)))
    outs = up_out_channels(hparams["scale"], hparams["n_feats"])
    for i, (w, w_old, cout) in enumerate(zip(up, hparams["up_widths"], outs, strict=True)):
        if w not in (w_old, cout):
            raise ConfigError(f"stage {i}: up width {w} is neither the trained {w_old} nor the "
                              f"projection's {cout} (an exact fold); prune with vsr compress")
    hp = dict(hparams)
    hp["rcab_widths"], hp["n_blocks"], hp["up_widths"] = rcab, [len(ws) for ws in rcab], up
    return hp


def fold_upsampler(upconv: torch.nn.Conv2d, proj: torch.nn.Conv2d
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a 3x3 conv C -> 4*cout whose x2 pixel shuffle equals
    ``proj(pixel_shuffle(upconv(x), 2))`` (proj a 1x1 conv w -> cout): nothing non-linear sits
    between the two, and the shuffle puts channel c*4+s at sub-pixel s of channel c, so the 1x1
    mixing commutes with it. Exact up to rounding; the fold's own projection is the identity."""
    import torch

    w, cout = proj.in_channels, proj.out_channels
    p = proj.weight.detach()[:, :, 0, 0].double()  # (cout, w)
    k = upconv.weight.detach().double().reshape(w, 4, *upconv.weight.shape[1:])
    weight = torch.einsum("oc,cs...->os...", p, k).reshape(4 * cout, *upconv.weight.shape[1:])
    bias = p @ upconv.bias.detach().double().reshape(w, 4) + proj.bias.detach().double()[:, None]
    return weight.to(upconv.weight.dtype), bias.reshape(4 * cout).to(upconv.weight.dtype)


def grow(source: torch.nn.Module, n_blocks: Sequence[int],
         up_widths: Sequence[int] | None = None) -> torch.nn.Module:
    """A DRN with ``n_blocks`` RCABs per stage and ``up_widths`` computing what ``source``
    computes: shared tensors copied, each added RCAB an identity (conv2 weight and bias zero),
    each up stage narrowed to its projection's width folded exactly (:func:`fold_upsampler`)."""
    import torch

    from vsr.models import DRN

    hp = grown_hparams(source.hparams, n_blocks, up_widths)
    hp.pop("n_blocks")
    target = DRN(**hp)
    old = source.state_dict()
    state = target.state_dict()
    for i, (w_new, w_old) in enumerate(zip(hp["up_widths"], source.hparams["up_widths"],
                                           strict=True)):
        if w_new != w_old:
            stage = source.up[i]
            weight, bias = fold_upsampler(stage.upconv, stage.proj)
            old.update({f"up.{i}.upconv.weight": weight, f"up.{i}.upconv.bias": bias,
                        f"up.{i}.proj.weight": torch.eye(w_new)[:, :, None, None],
                        f"up.{i}.proj.bias": torch.zeros(w_new)})
            log.info("up.%d: upconv and 1x1 projection folded, width %d -> %d", i, w_old, w_new)
    added = []
    for key, value in state.items():
        if key in old:
            if old[key].shape != value.shape:  # cannot happen for grown_hparams' widths
                raise ConfigError(f"{key}: {tuple(old[key].shape)} -> {tuple(value.shape)}")
            state[key] = old[key].to(value.dtype)
        elif re.fullmatch(r"up\.\d+\.blocks\.\d+\.conv2\.(weight|bias)", key):
            state[key] = torch.zeros_like(value)
            added.append(key.rsplit(".conv2.", 1)[0])
    target.load_state_dict(state)
    log.info("grown: %d RCABs added (%s)", len(set(added)), ", ".join(sorted(set(added))))
    return target.eval()


def cmd_grow(args: argparse.Namespace, argv: Sequence[str]) -> None:
    import torch

    from vsr.evaluate import evaluate_dataset
    from vsr.models import NetworkUpscaler, load_network, save_model
    from vsr.models.checkpoint import CheckpointInfo, load_tensors

    torch.set_num_threads(args.threads)
    source, info = load_network(args.checkpoint)
    # dual models (e.g. those vsr compress fitted) come along, for --init of a training run
    duals = {k: v for k, v in load_tensors(args.checkpoint)[0].items() if k.startswith("dual.")}
    source = source.float()
    n_blocks = [_int(s, "--n-blocks") for s in args.n_blocks.split(":")]
    up = [_int(s, "--up-widths") for s in args.up_widths.split(":")] if args.up_widths else None
    target = grow(source, n_blocks, up)
    provenance = {"tool": "benchmarks/arch_search.py grow", "grown_from": str(args.checkpoint),
                  "source_provenance": info.provenance,
                  "command": "python " + shlex.join([os.path.relpath(__file__, Path.cwd()),
                                                    *argv])}
    out = save_model(args.out, target, CheckpointInfo(
        arch="drn", hparams=dict(target.hparams), scale=target.scale,
        name=args.name or Path(args.out).stem, provenance=provenance), extra=duals)
    summary: dict[str, Any] = {"out": str(out), "hparams": target.hparams,
                               "dual_tensors": len(duals)}
    if args.verify:
        for label, net in (("source", source), ("grown", target)):
            res = evaluate_dataset(NetworkUpscaler(label, net), args.verify, target.scale)
            summary[f"{label}_psnr"] = res.psnr
            log.info("%s on %s: %.4f dB", label, args.verify, res.psnr)
    sys.stdout.write(json.dumps(summary) + "\n")


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time", help="params, mult-adds and CPU time of DRN grids and SPAN")
    t.add_argument("--grid", action="append", help="a grid spec (repeatable)")
    t.add_argument("--registry", default=",".join(SHIPPED),
                   help="registry models to time beside the grid (comma-separated)")
    t.add_argument("--checkpoint", action="append", help="NAME=PATH of a checkpoint to time")
    t.add_argument("--scale", type=int, action="append",
                   help="also time SPAN at this scale (it is timed at every grid scale)")
    t.add_argument("--quality-from", type=Path, action="append",
                   help="a benchmarks/peers.py report whose quality rows to show")
    t.add_argument("--eval", action="append", help="NAME=FILE: `vsr eval --json` output of a row")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--json", type=Path)
    t.add_argument("--markdown", type=Path)
    t.add_argument("--section", default="arch-grid",
                   help="marker key of the --markdown section this run replaces")
    g = sub.add_parser("grow", help="weight surgery: add identity RCABs to a trained DRN")
    g.add_argument("--checkpoint", type=Path, required=True)
    g.add_argument("--n-blocks", required=True, help="RCABs per stage, e.g. 14:0")
    g.add_argument("--up-widths", help="per stage: the trained width, or the projection's "
                   "output width (folds upconv and projection exactly), e.g. 16:8")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--name", help="name in the checkpoint (default: the file's stem)")
    g.add_argument("--verify", type=Path, help="benchmark folder: PSNR of source and grown")
    g.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        {"time": cmd_time, "grow": cmd_grow}[args.command](args, argv)
    except VsrError as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
