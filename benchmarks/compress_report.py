"""Compare an original DRN with its compressed versions: params, mult-adds, CPU latency,
PSNR/SSIM on benchmark sets; writes OUT/report.json and OUT/psnr_vs_macs.png.

    python benchmarks/compress_report.py --out DIR --model original=PATH --model drc=PATH \
        --model l1=PATH --data /work/shared/data/benchmark/Set5 ... [--threads 1]

The first --model is the reference for the "drop" columns.
"""

from __future__ import annotations

import argparse
import json
import sys

from vsr.compress.report import build_report, write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    ap.add_argument("--data", action="append", required=True, help="benchmark folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    report = build_report(models, args.data, threads=args.threads, repeats=args.repeats,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    js, png = write_report(report, args.out)
    print(json.dumps(report, indent=2))
    print(f"wrote {js} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
