#!/usr/bin/env bash
# One GPU slot of a training run that adds up across slots (issue 18): resume from the
# committed state (or start), train until the command's deadline less a reserve, evaluate on
# the carried benchmark packs, export fp16, and leave the state shards, the weights and a
# results JSON in $OUT; a short table is printed last.
#
# Before the slot, on the CPU machine (once per run, and again if the state grew):
#   python benchmarks/train_slot.py prepare --arch drn-s-x4       # builds .carry/ (ignored)
# The slot: one `run` call, carry [".carry"] (and ".whl" for --degrade, which needs PyAV):
#   ARCH=drn-s-x4 DEADLINE_S=560 bash benchmarks/gpu_train_slot.sh      # timeout_s 600
# A second call on the still-warm machine continues from the local run (no transfer), e.g. to
# use the rest of a 15-minute lease: DEADLINE_S=150 ... the same command. One command may run
# 10 minutes at most, so >= 10 training minutes per 15-minute lease takes both calls.
# The first lease should measure the settings first (no host sync check, samples/s, MFU):
#   python3 benchmarks/gpu_train_throughput.py --data .carry/train.npz --seconds 35 \
#       --out $OUT/throughput.json; ARCH=drn-s-x4 DEADLINE_S=$((560 - SECONDS)) ... this script
# (vsr/ needs `ln -sfn ../cli vsr/cli; ln -sfn ../models vsr/models; export PYTHONPATH=$PWD`
# there first, as this script does). $OUT takes 8 files: this script writes 5 + the shards
# (train.log, weights, metrics.csv, results.json, the state index), so at most 3 shards.
# After it, on the CPU machine:
#   python benchmarks/train_slot.py adopt --from FILES_AT --to benchmarks/train_slots/drn-s-x4
#   git add benchmarks/train_slots/drn-s-x4 && git commit ...
# Dry run on the CPU: DEVICE=cpu ARCH=drn-t-x2 BATCH=4 PATCH=16 DEADLINE_S=100 RESERVE_S=40 \
#   EVAL_PACKS=.carry/Set5.npz OUT=/tmp/out bash benchmarks/gpu_train_slot.sh
set -euo pipefail
started=$(date +%s.%N)
out="${OUT:?OUT: where the results go}"
arch="${ARCH:-drn-s-x4}"
device="${DEVICE:-cuda}"
slot_dir="${SLOT_DIR:-benchmarks/train_slots/$arch}"
work="${WORK:-/tmp/vsr-slot-$arch}"           # the run folder on this machine
deadline="${DEADLINE_S:-560}"                  # seconds this command may take in all
reserve="${RESERVE_S:-50}"                     # kept for evaluation, export and the report
iters="${ITERS:-300000}"; batch="${BATCH:-64}"; patch="${PATCH:-48}"
lr="${LR:-4e-4}"; lr_min="${LR_MIN:-1e-6}"; log_every="${LOG_EVERY:-200}"
moments="${MOMENTS:-bf16}"; shard_mib="${SHARD_MIB:-15}"; save_every="${SAVE_EVERY:-5000}"
compile_flag=(); [ "${COMPILE:-0}" = 1 ] && compile_flag=(--compile)
degrade=(); [ -n "${DEGRADE:-}" ] && degrade=(--degrade "$DEGRADE")
evals=(); for p in ${EVAL_PACKS:-.carry/Set5.npz .carry/B100.npz}; do
    [ -f "$p" ] && evals+=(--pack "$p"); done
log() { echo "$(date +%T) $*" >&2; }
mkdir -p "$out"

# (a) what the GPU image lacks: the package layout of an install, and carried wheels
if ! python3 -c "import vsr.cli, vsr.models" 2>/dev/null; then
    ln -sfn ../cli vsr/cli; ln -sfn ../models vsr/models
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import av" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -f .carry/train.npz ] || { echo "Error: .carry/train.npz missing (run train_slot.py prepare)"; exit 2; }

# (b) resume: this machine's run folder (an earlier call of this lease), else the committed state
resume=()
if [ -f "$work/config.json" ] && compgen -G "$work/train_state*.safetensors" > /dev/null; then
    log "resuming the local run in $work"; resume=(--resume "$work")
elif [ -f "$slot_dir/config.json" ]; then
    log "resuming from the committed state in $slot_dir"
    rm -rf "$work"; mkdir -p "$work"
    cp "$slot_dir"/config.json "$slot_dir"/train_state* "$work"/   # shards + their index
    [ -f "$slot_dir/metrics.csv" ] && cp "$slot_dir/metrics.csv" "$work"/
    resume=(--resume "$work")
else
    log "starting $arch: $iters iterations planned"
    rm -rf "$work"
fi
if [ ${#resume[@]} -gt 0 ]; then
    # config.json names its data by absolute path (vsr train stores them resolved): that of
    # the machine of the slot before, whose checkout may lie elsewhere; the carried pack here
    python3 - "$work/config.json" <<'PY'
import json, os, sys
path = sys.argv[1]
config = json.load(open(path))
config["data"] = [os.path.abspath(".carry/train.npz")]
json.dump(config, open(path, "w"), indent=2, sort_keys=True)
PY
fi

# (c) train until the deadline less the reserve (the limit counts the start-up too)
now=$(date +%s.%N)
limit_min=$(python3 -c "print(max(0.2, ($deadline - $reserve - ($now - $started)) / 60))")
log "training for at most $limit_min min"
common=(--device "$device" --time-limit "$limit_min" --log-every "$log_every"
        --save-every "$save_every" --state-moments "$moments" --state-shard-mib "$shard_mib"
        "${compile_flag[@]}" --json)
if [ ${#resume[@]} -gt 0 ]; then
    python3 -m vsr -v train "${resume[@]}" "${common[@]}" > "$out/train.json" 2> "$out/train.log"
else
    python3 -m vsr -v train --arch "$arch" --data .carry/train.npz --out "$work" --iters "$iters" \
        --batch-size "$batch" --patch "$patch" --lr "$lr" --lr-min "$lr_min" "${degrade[@]}" \
        "${common[@]}" > "$out/train.json" 2> "$out/train.log"
fi

# (d) evaluate the last weights on the carried benchmark packs
if [ ${#evals[@]} -gt 0 ]; then
    python3 benchmarks/train_slot.py eval --model "$work/last.safetensors" "${evals[@]}" \
        --device "$device" > "$out/eval.json" 2>> "$out/train.log" || log "evaluation failed"
else
    echo '{"results": []}' > "$out/eval.json"
fi

# (e, f) fp16 weights, state shards, config, metrics and the results JSON into $OUT
cp "$work/model-fp16.safetensors" "$out/$arch-fp16.safetensors"
cp "$work"/train_state* "$work/metrics.csv" "$out"/   # config.json: in results.json
# (g) the table, last
python3 benchmarks/train_slot.py report --arch "$arch" --run "$work" --train-json "$out/train.json" \
    --eval-json "$out/eval.json" --started "$started" --out "$out/results.json"
rm -f "$out/train.json" "$out/eval.json"   # both are inside results.json
