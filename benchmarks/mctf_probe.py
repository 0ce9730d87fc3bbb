"""Probe (issue 19): does motion-compensated temporal filtering (MCTF) after the model lift the
gain on coded video? Not a shipped feature; the answer is in benchmarks/VIDEO_EVAL.md.

For each clip: HR frames, LR by the degradation chain (as `vsr eval --video`), the model's
output per frame, then each output frame blended with its neighbours warped onto it by dense
optical flow (OpenCV DIS, computed on the LR luma, scaled x``scale`` for the output). A
neighbour's weight per pixel is exp(-(d/tol)^2), d the 3x3 mean of the largest per-channel
difference between the warped LR neighbour and the LR frame (so occlusions and flow errors
fall back to the frame itself); frame t weighs 1. Variants: ``window`` t-2..t+2 (tol 12) and
causal t-2..t (tol 8, what a live stream could do), against the model alone and
`--deflicker 0.5`. Needs OpenCV (the ``peers`` extra installs opencv-contrib-python-headless).

    V=""; for f in ../shared/data/video/*.mp4; do V="$V $f"; done
    python benchmarks/mctf_probe.py $V --degrade bicubic,x264:crf=28 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vsr.degradations import DegradationChain
from vsr.loading import load_model
from vsr.metrics import psnr_y
from vsr.pipeline.temporal import Deflicker
from vsr.video_eval import flicker, read_hr_frames

VARIANTS = {"window": (2, 2, 12.0), "causal": (2, 0, 8.0)}  # frames back, ahead, tolerance


def upscale(handle, lr: torch.Tensor, hr_shape) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> uint8 (T, 3, H, W), one frame per call, cropped to the HR."""
    h, w = hr_shape[-2:]
    with torch.inference_mode():
        return torch.stack([handle.upscale(lr[t:t + 1])[0, :, :h, :w].cpu()
                            for t in range(lr.shape[0])])


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32)


def luma(img: np.ndarray) -> np.ndarray:
    y = 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def mctf(sr: np.ndarray, lr: np.ndarray, back: int, ahead: int, tol: float,
         scale: int) -> np.ndarray:
    """The filtered output frames (T, H, W, 3) float32, 0..255."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ys = [luma(f) for f in lr]
    out = np.empty_like(sr)
    for t in range(len(sr)):
        acc, total = sr[t].copy(), np.ones(sr.shape[1:3], np.float32)
        for k in range(max(0, t - back), min(len(sr), t + ahead + 1)):
            if k == t:
                continue
            flow = dis.calc(ys[t], ys[k], None)
            d = cv2.blur(np.abs(warp(lr[k], flow) - lr[t]).max(-1), (3, 3))
            w = cv2.resize(np.exp(-(d / tol) ** 2), sr.shape[2:0:-1],
                           interpolation=cv2.INTER_LINEAR)
            up = cv2.resize(flow, sr.shape[2:0:-1], interpolation=cv2.INTER_LINEAR) * scale
            acc += w[..., None] * warp(sr[k], up)
            total += w
        out[t] = acc / total[..., None]
    return out


def score(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> tuple[float, float]:
    psnrs = [psnr_y(s, r, shave) for s, r in zip(sr, hr, strict=True)]
    return math.fsum(psnrs) / len(psnrs), flicker(sr, hr, shave)


def probe_clip(path: str, chain: DegradationChain, model, bicubic, scale: int,
               frames: int) -> dict:
    hr = read_hr_frames(path, frames, scale)
    lr = chain.apply_clip(hr, scale, seed=None)
    base_psnr, base_flicker = score(upscale(bicubic, lr, hr.shape), hr, scale)
    sr = upscale(model, lr, hr.shape)
    rows = {"bicubic": (0.0, base_flicker, 0.0)}
    psnr, flick = score(sr, hr, scale)
    rows["model"] = (psnr - base_psnr, flick, 0.0)
    steady, t0 = Deflicker(0.5, scale), time.perf_counter()
    out = torch.stack([steady(lr[t].permute(1, 2, 0), sr[t].permute(1, 2, 0)).permute(2, 0, 1)
                       for t in range(frames)])
    psnr, flick = score(out, hr, scale)
    rows["deflicker 0.5"] = (psnr - base_psnr, flick, (time.perf_counter() - t0) / frames)
    for name, (back, ahead, tol) in VARIANTS.items():
        t0 = time.perf_counter()
        filtered = mctf(hwc(sr), hwc(lr), back, ahead, tol, scale)
        seconds = (time.perf_counter() - t0) / frames
        out = torch.from_numpy(np.clip(np.rint(filtered), 0, 255).astype(np.uint8))
        psnr, flick = score(out.permute(0, 3, 1, 2).contiguous(), hr, scale)
        rows[f"mctf {name}"] = (psnr - base_psnr, flick, seconds)
    return {"clip": Path(path).stem, "lr": f"{lr.shape[-1]}x{lr.shape[-2]}",
            "rows": {k: {"gain_db": round(g, 3), "flicker": round(f, 3),
                         "filter_s_per_frame": round(s, 4)} for k, (g, f, s) in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--degrade", default="bicubic,x264:crf=28")
    ap.add_argument("--model", default="drn-t-x2-drc50-x264")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    chain = DegradationChain.parse(args.degrade)
    model = load_model(args.model, scale=args.scale, device="cpu", precision="fp32")
    bicubic = load_model("bicubic", scale=args.scale, device="cpu", precision="fp32")
    results = []
    for clip in args.clips:
        results.append(probe_clip(clip, chain, model, bicubic, args.scale, args.frames))
        for name, r in results[-1]["rows"].items():
            print(f"{results[-1]['clip']:28s} {name:14s} gain {r['gain_db']:+.2f} dB  "
                  f"flicker {r['flicker']:.3f}  filter {1000 * r['filter_s_per_frame']:.0f} "
                  "ms/frame", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"degrade": args.degrade, "model": args.model,
                                         "frames": args.frames, "threads": args.threads,
                                         "clips": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
