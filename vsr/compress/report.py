"""The comparison report of a compression experiment: size, mult-adds, CPU latency, quality.

One row per model (e.g. original, DRC, L1): params, mult-adds (96x96 LR input and 1280x720
output), median CPU latency (wall and thread-CPU time) of one forward pass producing a
1280x720 frame, and PSNR/SSIM on benchmark folders by the standard protocol (vsr.evaluate).
Written as JSON and plotted (PSNR against mult-adds) as a PNG.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vsr.compress.layers import layer_widths
from vsr.compress.run import model_stats
from vsr.models import load_network
from vsr.models.handle import NetworkUpscaler


def cpu_latency(models: dict[str, torch.nn.Module], out_hw: tuple[int, int] = (720, 1280), *,
                threads: int = 1, repeats: int = 5, warmup: int = 1
                ) -> dict[str, tuple[float, float]]:
    """(median wall seconds, median thread-CPU seconds) of one forward pass per model
    (float32, CPU, ``threads`` threads) producing an ``out_hw`` frame.

    Models are timed round-robin, so a load change on a shared machine hits all of them alike.
    With one thread the forward runs on the calling thread, and its CPU time is what the
    forward costs even when other processes compete for the cores (the wall time is not).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            inputs = {}
            for name, m in models.items():
                s = int(m.scale)
                inputs[name] = torch.rand(1, 3, out_hw[0] // s, out_hw[1] // s)
                m.eval()
            for _ in range(warmup):
                for name, m in models.items():
                    m(inputs[name], return_all=False)
            for _ in range(repeats):
                for name, m in models.items():
                    t0, c0 = time.perf_counter(), time.thread_time()
                    m(inputs[name], return_all=False)
                    cpu[name].append(time.thread_time() - c0)
                    wall[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]))
            for name in models}


def build_report(checkpoints: dict[str, str | Path], datasets: Sequence[str | Path], *,
                 threads: int = 1, repeats: int = 5,
                 latency_hw: tuple[int, int] = (720, 1280),
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rows for every ``name -> checkpoint``: widths, stats, latency (output ``latency_hw``),
    PSNR/SSIM per dataset."""
    from vsr.evaluate import evaluate_dataset

    nets = {name: load_network(path)[0] for name, path in checkpoints.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        rows[name] = {"checkpoint": str(checkpoints[name]), "widths": layer_widths(net),
                      **model_stats(net)}
    if progress:
        progress("latency")
    lat = cpu_latency(nets, latency_hw, threads=threads, repeats=repeats)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, net in nets.items():
            rows[name]["latency_s"] = round(lat[name][0], 4)
            rows[name]["latency_cpu_s"] = round(lat[name][1], 4)
            handle = NetworkUpscaler(name, net)
            for folder in datasets:
                if progress:
                    progress(f"{name} on {folder}")
                res = evaluate_dataset(handle, folder, int(net.scale))
                rows[name][res.dataset] = {"psnr": round(res.psnr, 4), "ssim": round(res.ssim, 5)}
    finally:
        torch.set_num_threads(old)
    first = next(iter(rows.values()))
    for row in rows.values():
        row["macs_drop"] = round(1 - row["macs_96"] / first["macs_96"], 4)
        row["latency_drop"] = round(1 - row["latency_s"] / first["latency_s"], 4)
        row["latency_cpu_drop"] = round(1 - row["latency_cpu_s"] / first["latency_cpu_s"], 4)
    return {"threads": threads, "latency_repeats": repeats, "latency_output": list(latency_hw),
            "reference": next(iter(rows)), "models": rows}


def plot_report(report: dict[str, Any], path: str | Path, dataset: str = "Set5") -> Path:
    """PSNR on ``dataset`` against mult-adds (96x96 LR input), one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, row in report["models"].items():
        if dataset not in row:
            continue
        x, y = row["macs_96"] / 1e9, row[dataset]["psnr"]
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xlabel("mult-adds, 96x96 LR input (G)")
    ax.set_ylabel(f"PSNR on {dataset} (dB, Y)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "report.json"
    js.write_text(json.dumps(report, indent=2))
    return js, plot_report(report, out_dir / "psnr_vs_macs.png")
