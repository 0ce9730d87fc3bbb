"""Time the deflicker filter alone: one 1280x720 uint8 frame and its 2x output, per frame.

    python benchmarks/deflicker_speed.py [--compare REV] [--runs 3] [--threads 2]

``--compare REV`` also times ``vsr/pipeline/temporal.py`` as it was at git revision REV,
interleaved with today's (alternating runs, the same frames), and prints both medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _module_at(rev: str):
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:vsr/pipeline/temporal.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "temporal_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("temporal_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ms_per_frame(cls, lr: torch.Tensor, sr: torch.Tensor, frames: int) -> float:
    f = cls(0.5, 2)
    f(lr, sr)
    f(lr, sr)  # warm: buffers made
    t = time.perf_counter()
    for _ in range(frames):
        f(lr, sr)
    return (time.perf_counter() - t) / frames * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", metavar="REV")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vsr.pipeline.temporal import Deflicker

    g = torch.Generator().manual_seed(0)
    lr = (torch.rand(720, 1280, 3, generator=g) * 255).to(torch.uint8)
    sr = (torch.rand(1440, 2560, 3, generator=g) * 255).to(torch.uint8)
    impls = {"today": Deflicker}
    if args.compare:
        impls[args.compare] = _module_at(args.compare).Deflicker
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(args.runs):
        for name, cls in impls.items():
            times[name].append(_ms_per_frame(cls, lr, sr, args.frames))
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.1f} ms per 2560x1440 output frame "
              f"(runs: {', '.join(f'{t:.1f}' for t in ts)})")
    if args.compare:
        ratio = statistics.median(times[args.compare]) / statistics.median(times["today"])
        print(f"{args.compare} / today: {ratio:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
