"""Training throughput of `vsr train` (issue 18 item 2): samples/s and model FLOP utilisation
of a few settings, each trained for a fixed time in this one process; a table last.

    python benchmarks/gpu_train_throughput.py --arch drn-s-x4 --data .carry/train.npz \
        --seconds 40 --out $OUT/throughput.json                       # on the GPU machine
    python benchmarks/gpu_train_throughput.py --device cpu --arch drn-t-x2 --patch 32 \
        --settings 16 --seconds 30 --data ../shared/data/train/T91    # on the CPU

A setting is BATCH[:compile][:fp32]; the default list is 16, 64, 64:compile, 128:compile.
``steady`` is the median of the logged windows after the first (start-up and compilation
excluded); ``overall`` counts every step of the run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsr.train import TrainConfig, train  # noqa: E402
from vsr.train.trainer import summary  # noqa: E402


def run_setting(args: argparse.Namespace, setting: str, folder: Path) -> dict:
    parts = setting.split(":")
    batch = int(parts[0])
    cfg = TrainConfig(arch=args.arch, data=tuple(args.data), out=str(folder / setting),
                      iterations=1_000_000, batch_size=batch, patch=args.patch, lr=2e-4,
                      device=args.device, log_every=args.log_every, save_every=10**9,
                      val_every=10**9, compile="compile" in parts,
                      amp="none" if "fp32" in parts else "auto",
                      time_limit=args.seconds / 60, peak_tflops=args.peak_tflops,
                      threads=args.threads)
    result = train(cfg)
    with (folder / setting / "metrics.csv").open() as fh:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(fh) if r["samples_per_s"]]
    s = summary(result)
    steady = statistics.median(rates[1:]) if len(rates) > 1 else None
    peak = s["peak_tflops"]
    row = {"setting": setting, "batch": batch, "steps": s["steps"], "overall": s["samples_per_s"],
           "steady": round(steady, 1) if steady else None,
           "flops_per_sample": s["flops_per_sample"], "peak_tflops": peak,
           "steady_mfu": (round(steady * s["flops_per_sample"] / 1e12 / peak, 4)
                          if steady and peak else None)}
    if torch.cuda.is_available():
        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    del result
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def sync_check(args: argparse.Namespace, folder: Path) -> str:
    """Steps between log points must never wait for the GPU: run five under CUDA's sync debug
    mode "error" (any synchronising call raises)."""
    from vsr.train.trainer import Trainer

    cfg = TrainConfig(arch=args.arch, data=tuple(args.data), out=str(folder / "sync"),
                      iterations=10, batch_size=16, patch=args.patch, device=args.device)
    trainer = Trainer(cfg)
    trainer._step(0, None)  # warm-up: cudnn's benchmark and first allocations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = [trainer._step(s, None) for s in range(1, 6)]
    except RuntimeError as exc:
        return f"FAILED: {' '.join(str(exc).split())[:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "ok" if bool(torch.stack(terms).isfinite().all()) else "FAILED: non-finite loss"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="drn-s-x4")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--settings", default="16,64,64:compile,128:compile")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    sync = "not checked (no CUDA)"
    with tempfile.TemporaryDirectory() as tmp:
        if args.device.startswith("cuda"):
            sync = sync_check(args, Path(tmp))
        for setting in args.settings.split(","):
            try:
                rows.append(run_setting(args, setting, Path(tmp)))
            except Exception as exc:  # one failing setting (e.g. out of memory) is a row too
                rows.append({"setting": setting, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    info = {"arch": args.arch, "patch": args.patch, "device": args.device,
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "no_sync_between_log_points": sync, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))
    print(f"{args.arch} LR patch {args.patch} on {info['device_name']}; "
          f"no host sync between log points: {sync}")
    print(f"{'setting':<16}{'steps':>7}{'overall/s':>11}{'steady/s':>10}{'MFU':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['setting']:<16} {r['error'][:60]}")
            continue
        mfu = f"{100 * r['steady_mfu']:.1f}%" if r.get("steady_mfu") else "-"
        print(f"{r['setting']:<16}{r['steps']:>7}{r['overall']:>11}{str(r['steady']):>10}"
              f"{mfu:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
