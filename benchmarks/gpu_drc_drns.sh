#!/usr/bin/env bash
# DRC against the L1 baseline on a paper-sized network (64 channels in the body), prepared for a
# session with a GPU lease; one call does all of it:
#   1. a short base network: vsr train ARCH (the paper trains 1e6 iterations; this is a base for
#      comparing the two compressions of the same network, not a paper-quality DRN-S);
#   2. vsr compress r=0.5: DRC's channel-number search, then DRC (prune, fine-tune) and L1 at
#      DRC's widths (prune, fine-tune) side by side on the same GPU, same budget and seed;
#   3. vsr eval on every VAL folder of the base and of both networks before and after
#      fine-tuning, then one line each.
# CONTROL=1 also fine-tunes the unpruned base the same way (all three side by side); EVAL=0 stops
# after the fine-tuning (evaluate the checkpoints elsewhere).
# Each step has a time limit (seconds, env T_TRAIN, T_SEARCH, T_COMPRESS, T_EVAL) so that a slow
# step cannot eat the lease: the train step saves every ITERS/4 and its last save is the base.
#
#   ARCH=drn-s-x2 DATA="d1 d2" VAL="Set5" OUT=$OUT bash benchmarks/gpu_drc_drns.sh
#   DEVICE=cpu ARCH=drn-t-x2 ITERS=4 SEARCH=2 FT=2 PATCH=16 ... bash benchmarks/gpu_drc_drns.sh  # dry run
set -euo pipefail
data="${DATA:?DATA: HR folders for training}"
val="${VAL:?VAL: benchmark folders; the first one selects checkpoints}"
out="${OUT:?OUT: output folder}"
device="${DEVICE:-cuda}"
arch="${ARCH:-drn-s-x4}"
iters="${ITERS:-2000}"; search="${SEARCH:-150}"; ft="${FT:-800}"; patch="${PATCH:-48}"
lr="${LR:-5e-4}"  # training and fine-tuning lr (drn-t-x2 fine-tuned best at its training lr)
vsr="${VSR:-python3 -m vsr}"
mkdir -p "$out"
d=(); for x in $data; do d+=(--data "$x"); done
first_val="${val%% *}"
log() { echo "$(date +%T) $*" >&2; }
quarter() { echo $(( $1 > 4 ? $1 / 4 : 1 )); }

log "train $arch, $iters iterations (limit ${T_TRAIN:-240} s)"
timeout "${T_TRAIN:-240}" $vsr -v train --arch "$arch" "${d[@]}" --out "$out/base" \
    --iterations "$iters" --batch-size 16 --patch "$patch" --lr "$lr" --lr-min 1e-6 \
    --device "$device" --log-every 100 --save-every "$(quarter "$iters")" \
    --val-data "$first_val" --val-every "$iters" --json \
    > "$out/train.json" 2> "$out/train.log" || log "train stopped early (rc $?): base = last save"

common=(--checkpoint "$out/base/last.safetensors" --duals "$out/base/train_state.safetensors"
        --ratio 0.5 "${d[@]}" --val-data "$first_val" --lr "$lr"
        --finetune-steps "$ft" --val-every "$(quarter "$ft")" --device "$device" --json)
log "compress: drc search, $search steps"
timeout "${T_SEARCH:-90}" $vsr -v compress "${common[@]}" --out "$out/drc" --method drc \
    --stage search --search-steps "$search" --search-val-every "$(quarter "$search")" \
    > "$out/drc-search.json" 2> "$out/drc-search.log"
log "compress: drc prune + fine-tune and l1 at drc's widths, side by side"
( timeout "${T_COMPRESS:-240}" $vsr -v compress "${common[@]}" --out "$out/drc" --method drc \
      --stage prune > "$out/drc-prune.json" 2> "$out/drc-prune.log" &&
  timeout "${T_COMPRESS:-240}" $vsr -v compress "${common[@]}" --out "$out/drc" --method drc \
      --stage finetune > "$out/drc.json" 2> "$out/drc.log" ) &
drc_pid=$!
timeout "${T_COMPRESS:-240}" $vsr -v compress "${common[@]}" --out "$out/l1" --method l1 \
    --widths-from "$out/drc/search.json" > "$out/l1.json" 2> "$out/l1.log" &
l1_pid=$!
ctl_pid=
if [ "${CONTROL:-0}" = 1 ]; then  # the unpruned base through the same fine-tuning
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1]));
json.dump({"widths": r["original_widths"]}, open(sys.argv[2], "w"))' \
        "$out/drc/search.json" "$out/full-widths.json"
    timeout "${T_COMPRESS:-240}" $vsr -v compress "${common[@]}" --out "$out/control" --method l1 \
        --widths-from "$out/full-widths.json" > "$out/control.json" 2> "$out/control.log" &
    ctl_pid=$!
fi
wait "$drc_pid" || log "drc prune/fine-tune failed (rc $?)"
wait "$l1_pid" || log "l1 failed (rc $?)"
[ -z "$ctl_pid" ] || wait "$ctl_pid" || log "control failed (rc $?)"
[ "${EVAL:-1}" = 1 ] || exit 0

v=(); for x in $val; do v+=(--data "$x"); done
for name in base/last drc/pruned drc/compressed l1/pruned l1/compressed; do
    [ -f "$out/$name.safetensors" ] || continue
    timeout "${T_EVAL:-60}" $vsr eval --model "$out/$name.safetensors" "${v[@]}" \
        --device "$device" --json > "$out/eval-${name//\//-}.json" 2>> "$out/eval.log" || true
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("base-last", "drc-pruned", "drc-compressed", "l1-pruned", "l1-compressed"):
    try:
        rows = json.loads((out / f"eval-{name}.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        print(f"{name:<16}missing")
        continue
    print(f"{name:<16}" + "  ".join(f"{r['dataset']} {r['psnr']:.3f}/{r['ssim']:.4f}" for r in rows))
for m in ("drc", "l1"):
    try:
        s = json.loads((out / m / "summary.json").read_text())
        print(m, "widths", s["prune"]["widths"], "mult-adds 96x96", s["prune"]["macs_96"],
              "of", s["original"]["macs_96"], "fine-tune s", s["finetune"]["seconds"])
    except (OSError, ValueError, KeyError) as exc:
        print(m, "summary missing:", exc)
PY
