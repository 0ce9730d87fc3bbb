"""Every GPU check of the engine and of compression in one run, for a session lent a CUDA
machine (device time is short: one call, a global time budget, a table printed last).

    python benchmarks/gpu_checks.py --clip CLIP --out DIR [--l1 CKPT] [--budget 400]

1. parity: the real CPU and CUDA processors on the clip's first frames, fp32 and fp16, for
   the shipped models: max |CUDA - CPU| in 8-bit levels (goal: fp32 <= 1) and fp16's PSNR
   against CPU fp32;
2. upscale: `vsr upscale CLIP OUT --device cuda --json` end to end (auto backend), then the
   packets per stream of the output against the input's;
3. latency: one forward pass in fp16 and fp32 at 540p -> 1080p and 1080p -> 4K output (x2),
   eager and replayed as one CUDA graph, CUDA events, models timed round-robin: the shipped
   drn-t-x2 and its DRC-pruned drn-t-x2-drc50 (and the L1 baseline when given), plus
   drn-s-x2 and drn-s-x4 next to copies at half widths (random weights: speed only);
4. bench: `vsr bench` (eager, compile, and tensorrt where installed; fp16) at 540p and
   1080p input for drn-s-x2 (random weights) and the default model;
5. with --train-data: `vsr train` throughput (drn-s-x4, batch 16, LR patch 48, AMP default)
   and `vsr compress` of the shipped drn-t-x2 with short stages, both on the device;
6. OOM tiling: a 1080p frame with the process capped at 1 GiB of GPU memory must switch to
   tiles and match the uncapped result.

Everything goes to DIR/gpu_checks.json (rewritten after each item) and DIR/gpu_checks.log.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import av
import numpy as np
import torch

from vsr.io.source import open_source
from vsr.loading import load_model
from vsr.models import REGISTRY, CheckpointInfo, load_network, save_model
from vsr.models.drn import DRN
from vsr.pipeline import make_processor

RESULTS: dict = {}
DEV = torch.device("cuda")  # --device cpu: a dry run of the script itself (small sizes)


def save(out: Path) -> None:
    (out / "gpu_checks.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def log(out: Path, msg: str) -> None:
    with open(out / "gpu_checks.log", "a") as f:
        f.write(msg.rstrip() + "\n")
    print(msg, file=sys.stderr, flush=True)


def run_frames(handle, frames):
    proc = make_processor(handle)
    got = []
    for f in frames:
        got += [img for _, img in proc.submit(f)]
    got += [img for _, img in proc.drain()]
    return got, proc.report


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def parity(clip: Path, n: int) -> dict:
    src = open_source(clip)
    frames = list(itertools.islice(src.frames(), n))
    src.close()
    torch.set_num_threads(16)
    rows = {}
    for model in ("drn-t-x2-drc50", "drn-t-x2", "bicubic"):
        scale = 2 if model == "bicubic" else None
        ref, _ = run_frames(load_model(model, scale=scale, device="cpu", precision="fp32"), frames)
        row = {"frames": len(frames), "size_in": list(frames[0].image.shape[:2])}
        for prec in ("fp32", "fp16"):
            handle = load_model(model, scale=scale, device=DEV, precision=prec)
            got, rep = run_frames(handle, frames)
            assert len(got) == len(ref), (len(got), len(ref))
            pairs = list(zip(ref, got, strict=True))
            diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in pairs]
            row[prec] = {"max_diff": int(max(d.max() for d in diffs)),
                         "frac_diff": round(float(np.mean([(d > 0).mean() for d in diffs])), 6),
                         "psnr_vs_cpu_fp32": min(psnr8(a, b) for a, b in pairs),
                         "fallback_frames": rep.fallback_frames}
        rows[model] = row
    return rows


def streams_of(path: Path) -> dict:
    with av.open(str(path)) as c:
        kinds = [s.type for s in c.streams]
        counts = [0] * len(kinds)
        for p in c.demux():
            if p.size:
                counts[p.stream.index] += 1
    return {"streams": kinds, "packets": counts}


def upscale(clip: Path, tmp: Path, timeout: float) -> dict:
    out = tmp / "upscaled.mp4"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vsr", "-v", "upscale", str(clip), str(out),
                        "--device", DEV.type, "--json", "--overwrite"],
                       capture_output=True, text=True, timeout=timeout)
    row = {"rc": p.returncode, "wall_s": round(time.perf_counter() - t, 1),
           "stderr_tail": p.stderr[-1500:]}
    if p.returncode == 0:
        row["json"] = json.loads(p.stdout)
        row["input"], row["output"] = streams_of(clip), streams_of(out)
    return row


def half(module: DRN) -> DRN:
    hp = dict(module.hparams)
    hp["down_widths"] = [max(1, w // 2) for w in hp["down_widths"]]
    hp["rcab_widths"] = [[max(1, w // 2) for w in ws] for ws in hp["rcab_widths"]]
    hp["up_widths"] = [max(1, w // 2) for w in hp["up_widths"]]
    return DRN(**hp)


def gpu_latency(models: dict, out_hw: tuple[int, int], dtype: torch.dtype, graph: bool,
                repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of one forward pass per model, round-robin, CUDA events."""
    dev = DEV
    if dev.type == "cpu":  # dry run: no events, no graphs
        dtype, graph, repeats = torch.float32, False, 2
    calls, times = {}, {name: [] for name in models}
    with torch.inference_mode():
        for name, m in models.items():
            m = m.to(dev, dtype).eval()
            s = int(m.scale)
            x = torch.rand(1, 3, out_hw[0] // s, out_hw[1] // s, device=dev, dtype=dtype)
            if graph:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        m(x, return_all=False)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    m(x, return_all=False)
                calls[name] = (lambda g=g, x=x: g.replay())  # x must outlive the graph
            else:
                calls[name] = (lambda m=m, x=x: m(x, return_all=False))
            for _ in range(3):
                calls[name]()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        for _ in range(repeats):
            for name, call in calls.items():
                if dev.type == "cpu":
                    t = time.perf_counter()
                    call()
                    times[name].append(1000 * (time.perf_counter() - t))
                    continue
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                call()
                b.record()
                b.synchronize()
                times[name].append(a.elapsed_time(b))
    return {name: round(statistics.median(v), 3) for name, v in times.items()}


def latency(l1: Path | None) -> dict:
    from vsr.models import create_model

    groups = {"drn-t-x2 (DRC r=0.5)": {"drn-t-x2": create_model("drn-t-x2"),
                                       "drn-t-x2-drc50": create_model("drn-t-x2-drc50")}}
    if l1 is not None:
        groups["drn-t-x2 (DRC r=0.5)"]["l1-50"] = load_network(l1)[0]
    torch.manual_seed(0)
    for name in ("drn-s-x2", "drn-s-x4"):
        full = create_model(name, pretrained=False)
        groups[name + " (half widths, random)"] = {name: full, name + "-half": half(full)}
    sizes = (((1080, 1920), "1080p"), ((2160, 3840), "4K")) if DEV.type == "cuda" else \
        (((72, 128), "dry"),)
    rows = {}
    for group, models in groups.items():
        for out_hw, label in sizes:
            for dtype in (torch.float16, torch.float32):
                for graph in (False, True):
                    key = f"{group} | {label} | {str(dtype)[6:]} | {'graph' if graph else 'eager'}"
                    try:
                        rows[key] = gpu_latency(models, out_hw, dtype, graph)
                    except Exception as exc:  # noqa: BLE001 - keep the other rows
                        rows[key] = {"error": repr(exc)[:300]}
    return rows


def make_clips(clip: Path, tmp: Path, n: int, sizes: dict[str, tuple[int, int]]
               ) -> dict[str, Path]:
    """The clip's first ``n`` frames resized to each of ``sizes``, x264 crf 18."""
    src = open_source(clip)
    imgs = [f.image for f in itertools.islice(src.frames(), n)]
    src.close()
    paths = {}
    for label, (w, h) in sizes.items():
        path = tmp / f"{label}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.options = {"preset": "veryfast", "crf": "18"}
            for img in imgs:
                fr = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(w, h)
                for p in s.encode(fr):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        paths[label] = path
    return paths


def bench(model: str, clip: Path, frames: int, timeout: float) -> dict:
    backends = "eager,compile"
    if importlib.util.find_spec("torch_tensorrt") is not None:  # absent: it would rerun compile
        backends += ",tensorrt"
    p = subprocess.run([sys.executable, "-m", "vsr", "-v", "bench", "--input", str(clip),
                        "-m", model, "--device", DEV.type, "--frames", str(frames),
                        "--repeats", "3",
                        "--precision", "fp16" if DEV.type == "cuda" else "fp32",
                        "--backend", backends if DEV.type == "cuda" else "eager",
                        "--preset", "ultrafast", "--json"],
                       capture_output=True, text=True, timeout=timeout)
    row = {"rc": p.returncode, "stderr_tail": p.stderr[-1500:]}
    if p.returncode == 0:
        row["json"] = json.loads(p.stdout)
    return row


def oom_tiling(checkpoint: Path, limit_gib: float) -> dict:
    """A 1080p frame through the CUDA processor, then again with the process capped at
    ``limit_gib`` of GPU memory: the capped run must switch to tiles and match."""
    from vsr.io.source import Frame

    yy, xx = np.mgrid[0:1080, 0:1920]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    frame = Frame(index=0, pts=0, image=img)
    handle = load_model(str(checkpoint), device=DEV, precision="fp16")
    torch.cuda.reset_peak_memory_stats()
    ref, rep = run_frames(handle, [frame])
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(limit_gib / total)
    try:
        got, rep = run_frames(handle, [frame])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    d = np.abs(ref[0].astype(int) - got[0].astype(int))
    return {"peak_gib_uncapped": round(peak, 2), "cap_gib": limit_gib,
            "oom_retries": rep.oom_retries, "tile": rep.tile, "max_diff": int(d.max()),
            "frac_diff": round(float((d > 0).mean()), 6), "notes": rep.notes}


def cli_json(args: list[str], timeout: float) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vsr", "-v", *args], capture_output=True,
                       text=True, timeout=timeout)
    row = {"rc": p.returncode, "wall_s": round(time.perf_counter() - t, 1),
           "stderr_tail": p.stderr[-1200:]}
    if p.returncode == 0:
        row["json"] = json.loads(p.stdout)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--l1", type=Path)
    ap.add_argument("--budget", type=float, default=400)
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/vsr-gpu-checks"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train-data", type=Path, help="HR folder for the train/compress steps")
    ap.add_argument("--val-data", type=Path)
    ap.add_argument("--train-iterations", type=int, default=300)
    ap.add_argument("--compress-steps", default="40,200", help="search,finetune")
    ap.add_argument("--skip", default="", help="comma-separated step names (prefixes)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--parity-frames", type=int, default=6)
    ap.add_argument("--sizes", default="540p:960x540,1080p:1920x1080")
    args = ap.parse_args()
    global DEV
    DEV = torch.device(args.device)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.tmp.mkdir(parents=True, exist_ok=True)

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    gpu = torch.cuda.get_device_name(0) if DEV.type == "cuda" else "CPU (dry run)"
    RESULTS["env"] = {"gpu": gpu, "torch": torch.__version__,
                      "av": av.__version__}
    log(args.out, f"{RESULTS['env']}")
    random_s = args.tmp / "drn-s-x2-random.safetensors"
    torch.manual_seed(0)
    net = DRN(**REGISTRY.get("drn-s-x2").kwargs)
    save_model(random_s, net, CheckpointInfo(arch="drn", hparams=dict(net.hparams), scale=2,
                                             name="drn-s-x2-random"))
    clips: dict = {}
    sizes = {k: tuple(map(int, v.split("x"))) for k, v in
             (item.split(":") for item in args.sizes.split(","))}
    steps = [
        ("parity", lambda: parity(args.clip, args.parity_frames)),
        ("latency", lambda: latency(args.l1)),
        ("upscale", lambda: upscale(args.clip, args.tmp, max(30, min(240, left() - 120)))),
        ("clips", lambda: clips.update(make_clips(args.clip, args.tmp, args.frames, sizes))
         or {k: str(v) for k, v in clips.items()}),
    ]
    for model, name in ((str(random_s), "drn-s-x2"), ("drn-t-x2-drc50", "default")):
        steps += [(f"bench {name} {label}",
                   lambda model=model, label=label: bench(model, clips[label], args.frames,
                                                          min(150, left())))
                  for label in sizes]
    if args.train_data:
        td = ["--data", str(args.train_data)]
        val = ["--val-data", str(args.val_data)] if args.val_data else []
        search_steps, ft_steps = args.compress_steps.split(",")
        every = ["--search-val-every", str(max(1, int(search_steps) // 2)),
                 "--val-every", str(max(1, int(ft_steps) // 2))]
        steps += [
            ("train drn-s-x4", lambda: cli_json(
                ["train", "--arch", "drn-s-x4", *td, "--out", str(args.tmp / "train"),
                 "--iterations", str(args.train_iterations), "--batch-size", "16",
                 "--patch", "48",
                 "--device", DEV.type, "--log-every", "50", "--save-every", "300", "--json"],
                min(150, left()))),
            ("compress drn-t-x2", lambda: cli_json(
                ["compress", "--checkpoint", "models/weights/drn-t-x2.safetensors", "--ratio",
                 "0.5", *td, *val, "--out", str(args.tmp / "compress"), "--search-steps",
                 search_steps, "--finetune-steps", ft_steps, *every, "--dual-warmup", "50",
                 "--device", DEV.type, "--json"], min(150, left()))),
        ]
    if DEV.type == "cuda":
        steps.append(("oom tiling", lambda: oom_tiling(random_s, 1.0)))
    for name, fn in steps:
        if any(name.startswith(k) for k in args.skip.split(",") if k):
            continue
        if left() < 20:
            RESULTS[name] = {"skipped": "out of time"}
            continue
        t = time.perf_counter()
        try:
            RESULTS[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a failed check is a result too
            RESULTS[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-2500:]}
        log(args.out, f"== {name} ({time.perf_counter() - t:.1f} s)\n"
                      f"{json.dumps(RESULTS[name], default=str)[:3000]}")
        save(args.out)
    summary(args.out)


def summary(out: Path) -> None:
    r = RESULTS
    print(f"\n{r['env']['gpu']}, torch {r['env']['torch']}")
    par = r.get("parity", {})
    for model, row in par.items():
        if isinstance(row, dict) and "fp32" in row:
            print(f"parity {model}: fp32 max|cuda-cpu| {row['fp32']['max_diff']}, "
                  f"fp16 max {row['fp16']['max_diff']} psnr {row['fp16']['psnr_vs_cpu_fp32']}")
    for key, row in r.get("latency", {}).items():
        if isinstance(row, dict):
            print(f"latency {key}: " + ", ".join(f"{k} {v} ms" for k, v in row.items()))
    up = r.get("upscale", {})
    if "json" in up:
        print(f"upscale: rc 0, {up['wall_s']} s, in {up['input']} out {up['output']}")
    for key, row in r.items():
        if key.startswith("bench") and "json" in row:
            for b in row["json"].get("backends", [row["json"]]):
                print(f"{key}: {b['requested']}->{b['backend']} model {b['model_fps']} "
                      f"pipeline {b['pipeline_fps']} serial {b['serial_fps']} "
                      f"encode {b['encode_fps']} decode {b['decode_fps']} "
                      f"prep {b['prepare_seconds']} err {b['max_error']}")
    for key in ("train drn-s-x4", "compress drn-t-x2", "oom tiling"):
        row = r.get(key, {})
        row = row.get("json", row) if isinstance(row, dict) else row
        print(f"{key}: {json.dumps(row, default=str)[:600]}")
    for key, row in r.items():
        if isinstance(row, dict) and ("error" in row or row.get("rc")):
            print(f"FAILED {key}: {row.get('error') or row.get('stderr_tail', '')[-300:]}")


if __name__ == "__main__":
    main()
