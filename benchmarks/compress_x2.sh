#!/usr/bin/env bash
# The DRC experiment on the trained drn-t-x2 (r = 0.5): DRC and the L1 baseline at DRC's widths,
# the same fine-tuning budget, then the report (params, mult-adds, CPU latency, Set5/Set14/B100).
# One CPU thread each, nice'd: the machine is shared. Results: benchmarks/COMPRESS_RESULTS.md.
set -euo pipefail
RUNS=${RUNS:-/work/runs/compress}
CKPT=${CKPT:-/work/runs/drn-t-x2/best.safetensors}
STATE=${STATE:-/work/runs/drn-t-x2/train_state.safetensors}   # trained dual models
D=/work/shared/data/train
B=/work/shared/data/benchmark
COMMON=(--checkpoint "$CKPT" --duals "$STATE" --ratio 0.5
        --data $D/T91 --data $D/BSD200 --data $D/SunHays80 --data $D/DebianPhotos
        --val-data $B/Set5 --prune-batches 2 --prune-batch-size 8
        --finetune-steps "${STEPS:-600}" --lr 3e-4 --val-every 150 --threads 1 --json)
mkdir -p "$RUNS"
cd "$RUNS"
nice -n 10 vsr -v compress "${COMMON[@]}" --out drc50 --method drc \
    --search-steps 200 --search-val-every 50 > drc50.json 2> drc50.log
nice -n 10 vsr -v compress "${COMMON[@]}" --out l1-50 --method l1 \
    --widths-from drc50/search.json > l1-50.json 2> l1-50.log
nice -n 10 python "$(dirname "$0")/compress_report.py" --out report --threads 1 --repeats 5 \
    --model original="$CKPT" --model drc=drc50/compressed.safetensors \
    --model l1=l1-50/compressed.safetensors \
    --data $B/Set5 --data $B/Set14 --data $B/B100 > report.stdout 2> report.log
