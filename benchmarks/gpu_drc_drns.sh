#!/usr/bin/env bash
# DRC against the L1 baseline on the paper's network size (DRN-S x4), prepared for a session with
# a GPU lease (not run yet; estimated 8-9 minutes on an H200 at the defaults, from this session's
# H200 rates: drn-s-x4 training 202 samples/s, drn-t fine-tuning 75-90 steps/s):
#   1. a short base network: vsr train drn-s-x4 (the paper trains 1e6 iterations; this is a base
#      for comparing the two compressions of the same network, not a paper-quality DRN-S);
#   2. vsr compress r=0.5: DRC (search, prune, fine-tune) and L1 at DRC's widths, same budget;
#   3. vsr eval on every VAL folder of the base and of both networks before and after
#      fine-tuning, then one line each.
#
#   DATA="d1 d2" VAL="Set5 B100" OUT=$OUT bash benchmarks/gpu_drc_drns.sh
#   DEVICE=cpu ITERS=2 SEARCH=2 FT=2 PATCH=16 ... bash benchmarks/gpu_drc_drns.sh   # dry run
set -euo pipefail
data="${DATA:?DATA: HR folders for training}"
val="${VAL:?VAL: benchmark folders; the first one selects checkpoints}"
out="${OUT:?OUT: output folder}"
device="${DEVICE:-cuda}"
arch="${ARCH:-drn-s-x4}"
iters="${ITERS:-2000}"; search="${SEARCH:-200}"; ft="${FT:-1500}"; patch="${PATCH:-48}"
lr="${LR:-2e-4}"  # training and fine-tuning lr (drn-t-x2 fine-tuned best at its training lr)
vsr="${VSR:-python3 -m vsr}"
mkdir -p "$out"
d=(); for x in $data; do d+=(--data "$x"); done
first_val="${val%% *}"
log() { echo "$(date +%T) $*" >&2; }

log "train $arch, $iters iterations"
$vsr -v train --arch "$arch" "${d[@]}" --out "$out/base" --iterations "$iters" --batch-size 16 \
    --patch "$patch" --lr "$lr" --lr-min 1e-6 --device "$device" --log-every 100 \
    --save-every "$iters" --val-data "$first_val" --val-every "$iters" --json \
    > "$out/train.json" 2> "$out/train.log"

common=(--checkpoint "$out/base/last.safetensors" --duals "$out/base/train_state.safetensors"
        --ratio 0.5 "${d[@]}" --val-data "$first_val" --lr "$lr"
        --finetune-steps "$ft" --val-every "$(( ft > 4 ? ft / 4 : 1 ))" --device "$device" --json)
log "compress: drc"
$vsr -v compress "${common[@]}" --out "$out/drc" --method drc --search-steps "$search" \
    --search-val-every "$(( search > 4 ? search / 4 : 1 ))" > "$out/drc.json" 2> "$out/drc.log"
log "compress: l1 at drc's widths"
$vsr -v compress "${common[@]}" --out "$out/l1" --method l1 \
    --widths-from "$out/drc/search.json" > "$out/l1.json" 2> "$out/l1.log"

v=(); for x in $val; do v+=(--data "$x"); done
for name in base/last drc/pruned drc/compressed l1/pruned l1/compressed; do
    $vsr eval --model "$out/$name.safetensors" "${v[@]}" --device "$device" --json \
        > "$out/eval-${name//\//-}.json" 2>> "$out/eval.log"
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("base-last", "drc-pruned", "drc-compressed", "l1-pruned", "l1-compressed"):
    rows = json.loads((out / f"eval-{name}.json").read_text())["results"]
    print(f"{name:<16}" + "  ".join(f"{r['dataset']} {r['psnr']:.3f}/{r['ssim']:.4f}" for r in rows))
for m in ("drc", "l1"):
    s = json.loads((out / f"{m}.json").read_text())
    print(m, "widths", s["prune"]["widths"], "mult-adds 96x96", s["prune"]["macs_96"],
          "of", s["original"]["macs_96"])
PY
