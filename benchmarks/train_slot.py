"""Helpers of benchmarks/gpu_train_slot.sh: training that adds up across 15-minute GPU slots.

    python benchmarks/train_slot.py prepare --arch drn-s-x4 [--eval Set5 --eval B100]
        builds .carry/ (git-ignored, carried to the GPU machine): a training subset of
        ../shared/data/train as an image pack (.carry/train.npz) and benchmark packs
        (.carry/Set5.npz, ...), sized so that the working tree that travels (tracked and
        untracked files, the committed slot state, carried wheels, .carry/) stays under 64 MiB.
    python benchmarks/train_slot.py eval --model M.safetensors --pack .carry/Set5.npz ...
        the standard protocol (vsr.evaluate.evaluate_image) on packed benchmark images; needs
        no PyAV (the GPU machine has none).
    python benchmarks/train_slot.py report --run RUN --out OUT ...
        the results JSON and the table the slot prints last.
    python benchmarks/train_slot.py adopt --from FILES_AT --to benchmarks/train_slots/ARCH
        back on the CPU machine: the returned state, config and metrics into the slot folder
        (committed), the fp16 weights into runs/slots/ARCH (ignored), the history appended.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TREE_LIMIT = 64 * 2**20
TILE = 512  # large images are cut into tiles of at most this side, so one photo cannot fill it


def _tree_bytes(exclude: tuple[Path, ...]) -> int:
    """Bytes of the files that travel with the checkout: tracked + untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = REPO / name
        if path.is_file() and not any(path.is_relative_to(e) for e in exclude):
            total += path.stat().st_size
    return total


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() \
        else 0


def state_estimate(arch: str, moments: str) -> int:
    """Bytes of a training state of ``arch``: fp32 primal + duals, plus the moments."""
    from vsr.models import REGISTRY, DualNetworks
    from vsr.models.complexity import count_params

    primal = REGISTRY.get(arch).build()
    duals = DualNetworks(phase=primal.phase, width=int(primal.hparams.get("n_feats", 16)))
    n = count_params(primal) + count_params(duals)
    return n * 4 + {"fp32": 8, "bf16": 4, "none": 0}[moments] * n


def _tiles(img: torch.Tensor) -> list[torch.Tensor]:
    h, w = img.shape[-2:]
    if max(h, w) <= TILE:
        return [img]
    return [img[:, y:y + TILE, x:x + TILE].clone() for y in range(0, h - TILE // 2, TILE)
            for x in range(0, w - TILE // 2, TILE)]


def prepare(args: argparse.Namespace) -> dict:
    from vsr.evaluate import benchmark_images
    from vsr.imageio import list_images, read_image
    from vsr.train.data import pack_filter, save_image_pack

    carry = REPO / ".carry"
    carry.mkdir(exist_ok=True)
    for old in carry.glob("*.npz"):
        old.unlink()
    slot_dir = REPO / args.slot_dir
    state = max(_folder_bytes(slot_dir), state_estimate(args.arch, args.moments))
    wheels = _folder_bytes(REPO / ".whl")
    tree = _tree_bytes(exclude=(slot_dir, carry, REPO / ".whl"))
    budget = TREE_LIMIT - tree - state - wheels - int(args.margin_mib * 2**20)
    report = {"tree_bytes": tree, "state_bytes_reserved": state, "wheel_bytes": wheels,
              "budget_bytes": budget, "eval": {}, "train": {}}
    for name in args.eval:
        folder = SHARED / "benchmark" / name
        _, paths = benchmark_images(folder)
        images = {p.stem: read_image(p) for p in paths}
        path = save_image_pack(carry / f"{name}.npz", images)
        size = path.stat().st_size
        if size > budget - args.min_train_mib * 2**20:
            path.unlink()
            report["eval"][name] = {"skipped": f"{size} bytes do not fit"}
            continue
        budget -= size
        report["eval"][name] = {"images": len(images), "bytes": size}
    # tiles of each training folder in a fixed random order; the folders take turns, so a few
    # large photographs cannot fill the budget alone
    gen = torch.Generator().manual_seed(0)
    queues = []
    for folder in args.train:
        tiles = [(f"{folder}_{path.stem}_{i:02d}", tile)
                 for path in list_images(SHARED / "train" / folder)
                 for i, tile in enumerate(_tiles(read_image(path)))
                 if min(tile.shape[-2:]) >= args.min_side]
        queues.append([tiles[k] for k in torch.randperm(len(tiles), generator=gen).tolist()])
    total = sum(len(q) for q in queues)
    chosen: dict[str, torch.Tensor] = {}
    used = 0
    while any(queues) and used < budget:
        for q in queues:
            if not q:
                continue
            name, tile = q.pop(0)
            size = len(zlib.compress(pack_filter(tile).tobytes(), 6)) + 200
            if used + size <= budget:
                chosen[name] = tile
                used += size
    path = save_image_pack(carry / "train.npz", dict(sorted(chosen.items())))
    pixels = sum(t.shape[-1] * t.shape[-2] for t in chosen.values())
    per_folder = {f: sum(1 for n in chosen if n.startswith(f + "_")) for f in args.train}
    report["train"] = {"tiles": len(chosen), "of": total, "bytes": path.stat().st_size,
                       "megapixels": round(pixels / 1e6, 2), "per_folder": per_folder,
                       "sha256": _sha256(path)}
    report["tree_after_bytes"] = (tree + state + wheels + _folder_bytes(carry))
    (carry / "manifest.json").write_text(json.dumps(report, indent=2))
    return report


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(args: argparse.Namespace) -> dict:
    from vsr.evaluate import evaluate_image
    from vsr.models import load_model
    from vsr.train.data import load_image_pack

    handle = load_model(args.model, device=torch.device(args.device))
    rows = []
    for pack in args.pack:
        images = load_image_pack(pack)
        t0 = time.perf_counter()
        scores = [evaluate_image(handle, hr, int(handle.scale)) for hr in images.values()]
        rows.append({"dataset": Path(pack).stem, "scale": int(handle.scale),
                     "psnr": sum(p for p, _ in scores) / len(scores),
                     "ssim": sum(s for _, s in scores) / len(scores), "images": len(scores),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return {"model": str(args.model), "results": rows}


def report(args: argparse.Namespace) -> dict:
    """Collect the slot's numbers: training JSON lines, evaluation, state files."""
    run = Path(args.run)
    out: dict = {"arch": args.arch, "slot_started": args.started,
                 "slot_seconds": round(time.time() - args.started, 1)}
    for key, path in (("train", args.train_json), ("eval", args.eval_json)):
        try:
            out[key] = json.loads(Path(path).read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as exc:
            out[key] = {"error": str(exc)}
    out["config"] = json.loads((run / "config.json").read_text())
    states = sorted(run.glob("train_state*.safetensors"))
    out["state_files"] = {p.name: p.stat().st_size for p in states}
    manifest = REPO / ".carry" / "manifest.json"
    if manifest.exists():
        out["train_pack_sha256"] = json.loads(manifest.read_text())["train"].get("sha256")
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
    out["torch"] = torch.__version__
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


def table(out: dict) -> str:
    t, e = out.get("train", {}), out.get("eval", {})
    lines = [f"slot {out['arch']}: step {t.get('steps')} of {t.get('iterations')} "
             f"({'stopped at the time limit' if t.get('stopped_at_time_limit') else 'plan done'})"
             f", {t.get('seconds')} s training, {t.get('samples_per_s')} samples/s, "
             f"{t.get('tflops')} model TFLOP/s, MFU {t.get('mfu')}"]
    for r in e.get("results", []):
        lines.append(f"  {r['dataset']:<6} x{r['scale']}  PSNR {r['psnr']:.3f}  "
                     f"SSIM {r['ssim']:.4f}  ({r['images']} images)")
    lines.append(f"  state files {out.get('state_files')}  slot {out['slot_seconds']} s")
    return "\n".join(lines)


def adopt(args: argparse.Namespace) -> dict:
    """Copy a slot's returned files into the committed slot folder (and the weights aside)."""
    src, dst = Path(args.src), REPO / args.to
    results = json.loads((src / "results.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("train_state*"):  # shards and their index.json
        old.unlink()
    for p in [*src.glob("train_state*"), src / "metrics.csv"]:
        shutil.copy(p, dst / p.name)
    (dst / "config.json").write_text(json.dumps(results["config"], indent=2, sort_keys=True))
    weights = REPO / "runs" / "slots" / Path(args.to).name
    weights.mkdir(parents=True, exist_ok=True)
    for p in src.glob("*-fp16.safetensors"):
        shutil.copy(p, weights / p.name)
    with (dst / "slots.jsonl").open("a") as fh:
        fh.write(json.dumps(results) + "\n")
    return {"slot_dir": str(dst), "weights": str(weights),
            "step": results.get("train", {}).get("steps")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--arch", default="drn-s-x4")
    p.add_argument("--moments", default="bf16", choices=["fp32", "bf16", "none"])
    p.add_argument("--slot-dir", default=None, help="default benchmarks/train_slots/ARCH")
    p.add_argument("--train", action="append", default=None,
                   help="folders of ../shared/data/train (default: all four)")
    p.add_argument("--eval", action="append", default=None, help="default: Set5 and B100")
    p.add_argument("--min-side", type=int, default=192, help="smallest tile kept (HR patch)")
    p.add_argument("--min-train-mib", type=float, default=8.0,
                   help="an evaluation set is left out if it would leave less than this")
    p.add_argument("--margin-mib", type=float, default=3.0)
    p = sub.add_parser("eval")
    p.add_argument("--model", required=True)
    p.add_argument("--pack", action="append", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("report")
    p.add_argument("--arch", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--train-json", required=True)
    p.add_argument("--eval-json", required=True)
    p.add_argument("--started", type=float, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("adopt")
    p.add_argument("--from", dest="src", required=True)
    p.add_argument("--to", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        args.slot_dir = args.slot_dir or f"benchmarks/train_slots/{args.arch}"
        args.train = args.train or ["T91", "BSD200", "SunHays80", "DebianPhotos"]
        args.eval = args.eval or ["Set5", "B100"]
        print(json.dumps(prepare(args), indent=2))
    elif args.cmd == "eval":
        print(json.dumps(evaluate(args)))
    elif args.cmd == "report":
        print(table(report(args)))
    else:
        print(json.dumps(adopt(args)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
