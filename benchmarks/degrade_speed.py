"""Samples/s of DegradationChain.apply_images on training-sized batches (16 HR crops, 192x192).

Crops are random 192x192 windows of BSD200 images (real content, so the codecs do real work).
Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/degrade_speed.py [--batches N] [--workers W]
[SPEC ...] (passive OpenMP waits, as the vsr command sets them: spinning threads cost ~20x here
on a loaded 2-core machine). Prints one JSON object: per spec, samples/s and ms per batch from
the median wall time of a batch, samples/s from the fastest batch (the least disturbed by other
processes), and CPU ms per sample (median process CPU time, all threads, / batch size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vsr.degradations import DegradationChain
from vsr.imageio import list_images, read_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "BSD200"
SPECS = ("bicubic", "blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4",
         "bicubic,jpeg:q=30~95", "bicubic,x264:crf=18~32",
         "blur:sigma=0.2~1.5,bicubic,noise:sigma=0~4,x264:crf=18~32")


def crops(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    paths = list_images(DATA)
    out = []
    for _ in range(n):
        img = read_image(paths[int(torch.randint(len(paths), (1,), generator=gen))])
        top = int(torch.randint(img.shape[-2] - size + 1, (1,), generator=gen))
        left = int(torch.randint(img.shape[-1] - size + 1, (1,), generator=gen))
        out.append(img[:, top:top + size, left:left + size])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=192)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("specs", nargs="*", default=list(SPECS))
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    batches = [crops(args.batch, args.patch, gen) for _ in range(args.batches)]
    report = {"batch": args.batch, "patch": args.patch, "scale": 2, "workers": args.workers,
              "torch_threads": torch.get_num_threads(), "specs": {}}
    chains = {spec: DegradationChain.parse(spec) for spec in args.specs}
    for chain in chains.values():
        chain.apply_images(batches[0], 2, generator=gen, workers=args.workers)  # warm-up
    # round robin over the specs, so that load from other processes hits all of them alike;
    # wall time gives samples/s, process CPU time (all threads) the CPU cost per sample
    walls: dict[str, list[float]] = {spec: [] for spec in chains}
    cpus: dict[str, list[float]] = {spec: [] for spec in chains}
    for hr in batches:
        for spec, chain in chains.items():
            w0, c0 = time.perf_counter(), time.process_time()
            chain.apply_images(hr, 2, generator=gen, workers=args.workers)
            walls[spec].append(time.perf_counter() - w0)
            cpus[spec].append(time.process_time() - c0)
    for spec in chains:
        wall, cpu = statistics.median(walls[spec]), statistics.median(cpus[spec])
        best = min(walls[spec])
        report["specs"][spec] = {"samples_per_s": round(args.batch / wall, 1),
                                 "ms_per_batch": round(1000 * wall, 1),
                                 "best_samples_per_s": round(args.batch / best, 1),
                                 "cpu_ms_per_sample": round(1000 * cpu / args.batch, 2)}
        print(spec, report["specs"][spec], file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
