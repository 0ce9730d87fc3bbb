"""Diagnostic variants of dual regression channel selection, each followed by a short
fine-tune; prints and appends one JSON line per variant (Set5 PSNR every 100 steps).

This is the experiment that chose the default per-selection refit of ``vsr compress``
(benchmarks/COMPRESS_RESULTS.md). It re-implements the selection loop of
``vsr.compress.prune.dr_prune`` with knobs the product does not have: the loss weights of
the selection (``w=feature,primal,dual``), ``select=l1`` (L1 order instead of the gradient
criterion) and ``final=orig`` (restore the original weights of the kept channels).

    python benchmarks/prune_variants.py NAME [method=l1|drc] [refit=sgd|lstsq] [batches=2]
        [ridge=1e-3] [lr=5e-5] [w=1,1,0.1] [select=l1] [final=orig] [steps=400]

Inputs: ``VSR_COMPRESS_INPUT`` (default /work/runs/compress/input) holds best.safetensors
(the trained drn-t-x2) and train_state.safetensors (its duals); results go to
``VSR_VARIANTS_OUT`` (default /tmp/prune_variants).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vsr.compress.config import CompressConfig
from vsr.compress.data import validation_psnr
from vsr.compress.finetune import finetune
from vsr.compress.layers import producer_l1_rank, prunable_layers
from vsr.compress.masks import slim_network
from vsr.compress.prune import (
    _capture,
    _lstsq_refit,
    _normal_equations,
    _teacher_features,
    l1_prune,
)
from vsr.compress.run import _Run
from vsr.train.losses import dual_loss, primal_loss

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WIDTHS = [8, 12, 16, 16, 16, 16, 16, 16]  # the DRC search's widths for drn-t-x2 at r=0.5


def select(orig, duals, data, opt):
    wf, wp, wd = (float(x) for x in opt.get("w", "1,1,0.1").split(","))
    refit = opt.get("refit", "sgd")
    pruned = copy.deepcopy(orig).train()
    duals = copy.deepcopy(duals).eval()
    for p in [*pruned.parameters(), *duals.parameters()]:
        p.requires_grad_(False)
    targets = _teacher_features(orig, data)
    kept = []
    for li, (layer, width) in enumerate(zip(prunable_layers(pruned), WIDTHS, strict=True)):
        c = layer.width
        w = layer.consumer.weight
        w0 = w.detach().clone()
        w.data.zero_()
        w.requires_grad_(True)
        mask = torch.zeros(c)
        sgd = torch.optim.SGD([w], lr=float(opt.get("lr", 5e-5)), momentum=0.9, nesterov=True)
        sel: list[int] = []

        def loss_of(b):
            store = []
            h = _capture(layer, store)  # noqa: B023 (the layer of this iteration)
            outs = pruned(data[b][0])
            h.remove()
            loss = wf * F.mse_loss(store[0], targets[b][li]) + wp * primal_loss(outs, data[b])  # noqa: B023
            return loss + wd * dual_loss(duals, outs, data[b]) if wd else loss

        while len(sel) < width:
            if opt.get("select") == "l1":
                j = int(producer_l1_rank(layer)[len(sel)])
            else:
                score = torch.zeros(c, dtype=torch.float64)
                for b in range(len(data)):
                    (g,) = torch.autograd.grad(loss_of(b), w)
                    score += g.double().pow(2).sum(dim=(0, 2, 3)).sqrt()
                score[sel] = -1
                j = int(score.argmax())
            sel.append(j)
            mask[j] = 1
            with torch.no_grad():
                w[:, j] = w0[:, j]
            if refit == "lstsq":
                if len(sel) == 1:  # the layer's input is fixed while its columns are chosen
                    gram, cross = _normal_equations(pruned, layer, data,
                                                    [t[li] for t in targets])
                _lstsq_refit(layer, gram, cross, sel, float(opt.get("ridge", 1e-3)))
            else:
                for b in range(len(data)):
                    sgd.zero_grad()
                    loss_of(b).backward()
                    w.grad.mul_(mask.view(1, -1, 1, 1))
                    sgd.step()
        if opt.get("final") == "orig":
            with torch.no_grad():
                w.copy_(w0 * mask.view(1, -1, 1, 1))
        w.requires_grad_(False)
        kept.append(sorted(sel))
    return slim_network(pruned, kept).eval(), kept


def main() -> None:
    name, opt = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
    src = Path(os.environ.get("VSR_COMPRESS_INPUT", "/work/runs/compress/input"))
    out = Path(os.environ.get("VSR_VARIANTS_OUT", "/tmp/prune_variants"))
    out.mkdir(parents=True, exist_ok=True)
    train = DATA / "train"
    cfg = CompressConfig(
        checkpoint=str(src / "best.safetensors"), duals=str(src / "train_state.safetensors"),
        ratio=0.5, data=tuple(str(train / d) for d in ("T91", "BSD200", "SunHays80",
                                                         "DebianPhotos")),
        val_data=str(DATA / "benchmark" / "Set5"), out=str(out / name), threads=1)
    run = _Run(cfg, None)
    duals = run._duals().eval()
    t0 = time.time()
    if opt.get("method") == "l1":
        slim, kept = l1_prune(run.original, WIDTHS)
    else:
        batches = run._batches(run.sampler, 8, stream=2)
        data = [batches(i) for i in range(int(opt.get("batches", 2)))]
        slim, kept = select(run.original, duals, data, opt)
    prune_s = time.time() - t0
    res = finetune(slim, duals, run._batches(run.sampler, 16, stream=4),
                   steps=int(opt.get("steps", 400)), lr=3e-4, lr_min=1e-6, dual_lambda=0.1,
                   score=lambda m: validation_psnr(m, cfg.val_data, 2)[0], val_every=100)
    line = json.dumps({"name": name, "opt": opt, "prune_s": round(prune_s),
                       "set5": [h["val_psnr"] for h in res.history], "kept": kept})
    print(line)
    with open(out / "results.jsonl", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
