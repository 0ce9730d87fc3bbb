"""Where a DRN's CPU time goes on one 720p output frame, and what two exact rewrites save.

    python benchmarks/profile_drn.py --model drn-t-x2-drc50 --threads 2 [--top 12] [--repeats 9]

Prints the operators with the most self CPU time (torch profiler, channels_last, inference mode:
how the eager backend runs a model), then the median time per frame, measured round-robin in one
process so that all see the same machine load, of the network as shipped against: ``unfused``,
the RCAB as ``x + ca(y)`` (two passes over memory instead of one ``addcmul``); ``cat``, the
last tail on the full-resolution concatenation instead of the sum of two convolutions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from vsr.models import DRN, REGISTRY
from vsr.models.drn import RCAB


def _unfused(self: RCAB, x: torch.Tensor) -> torch.Tensor:
    return x + self.ca(self.conv2(F.relu(self.conv1(x))))


def _with_cat(net: DRN, x: torch.Tensor) -> torch.Tensor:
    x, skips = net._encode(x)
    for i, stage in enumerate(net.up):
        x = torch.cat((stage(x), skips[net.phase - 1 - i]), dim=1)
    return net.tails[-1](x) + net.rgb_mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drn-t-x2-drc50", help="registry model (random weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = REGISTRY.get(args.model)
    net = DRN(**spec.kwargs).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 720 // spec.scale, 1280 // spec.scale)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x, return_all=False)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(x, return_all=False)
        rows = sorted(prof.key_averages(group_by_input_shape=True),
                      key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        print(f"{args.model}, {args.threads} threads, LR {x.shape[-1]}x{x.shape[-2]}: "
              f"self CPU time by operator and input shape")
        print("| share | ms | calls | operator | first input |\n| --- | --- | --- | --- | --- |")
        for e in rows[:args.top]:
            shape = e.input_shapes[0] if e.input_shapes else ""
            print(f"| {100 * e.self_cpu_time_total / total:.1f}% | "
                  f"{e.self_cpu_time_total / 1e3:.1f} | {e.count} | {e.key} | {shape} |")
        fused = RCAB.forward
        variants = {"shipped": (fused, lambda: net(x, return_all=False)),
                    "unfused": (_unfused, lambda: net(x, return_all=False)),
                    "cat": (fused, lambda: _with_cat(net, x))}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (forward, run) in variants.items():
                RCAB.forward = forward
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        RCAB.forward = fused
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\ns per frame, median of {args.repeats} round-robin: shipped {med['shipped']:.3f}, "
          f"unfused {med['unfused']:.3f} (ratio {med['shipped'] / med['unfused']:.2f}), "
          f"cat {med['cat']:.3f} (ratio {med['shipped'] / med['cat']:.2f})")


if __name__ == "__main__":
    main()
