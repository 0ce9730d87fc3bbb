"""CPU seconds per frame of eager and onnxruntime, with and without vsr.hostmem's tuning, in
fp32 or bf16.

One model call per backend and precision in turn (so load changes hit all alike), median of
--repeats:

    python benchmarks/cpu_backends.py --threads 1            # allocator tuned, as the CLI runs
    python benchmarks/cpu_backends.py --threads 1 --plain    # glibc's defaults
    python benchmarks/cpu_backends.py --backends eager --precisions fp32,bf16

Results are in the README ("Performance").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drn-t-x2")
    ap.add_argument("--size", default="360x640", help="input HxW")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--backends", default="eager,onnx")
    ap.add_argument("--precisions", default="fp32", help="fp32,bf16 (onnx runs fp32 only)")
    ap.add_argument("--plain", action="store_true", help="leave glibc's allocator as it is")
    args = ap.parse_args()
    from vsr.hostmem import keep_freed_memory

    tuned = False if args.plain else keep_freed_memory()
    torch.set_num_threads(args.threads)
    from vsr.backends import prepare
    from vsr.loading import load_model

    h, w = (int(v) for v in args.size.split("x"))
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    runners, inputs = {}, {}
    for p in args.precisions.split(","):
        handle = load_model(args.model, device="cpu", precision=p)
        inputs[p] = x.to(handle.dtype)
        for b in args.backends.split(","):
            if b != "onnx" or p == "fp32":
                key = b if p == "fp32" else f"{b}/{p}"
                runners[key] = (p, prepare(handle, b, tuple(x.shape), sample=inputs[p]))
    times: dict[str, list[float]] = {b: [] for b in runners}
    with torch.inference_mode():
        for p, r in runners.values():
            r(inputs[p])  # warm-up
        for _ in range(args.repeats):
            for b, (p, r) in runners.items():
                t = time.perf_counter()
                r(inputs[p])
                times[b].append(time.perf_counter() - t)
    print(json.dumps({"model": args.model, "size": [h, w], "threads": args.threads,
                      "freed_memory_kept": tuned,
                      "backend_used": {b: r.backend for b, (_, r) in runners.items()},
                      "median_s": {b: round(statistics.median(v), 3) for b, v in times.items()},
                      "runs_s": {b: [round(t, 3) for t in v] for b, v in times.items()}}))


if __name__ == "__main__":
    main()
