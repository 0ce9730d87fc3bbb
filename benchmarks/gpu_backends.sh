#!/usr/bin/env bash
# GPU backends side by side (prepared for a session with a CUDA machine; not run here):
# eager fp16, compile fp16 (CUDA graphs) and tensorrt fp16 for the default model at
# 540p -> 1080p and 1080p -> 4K (x2), model fps and pipeline fps, then a short table.
#
#   bash benchmarks/gpu_backends.sh   # FRAMES=60 CODEC=libx264 PRESET=ultrafast DEVICE=cuda
#   DEVICE=cpu PRECISION=fp32 BACKENDS=eager,tensorrt FRAMES=2 SIZES=t:64x36 bash ...  # dry run
#   WHEELS=shared/wheels bash benchmarks/gpu_backends.sh   # installs missing wheels offline
#
# MODEL: registry name or checkpoint (default: the registry default when its weights are
# shipped, else a randomly initialised copy: speed does not depend on the weights).
# TensorRT needs torch-tensorrt (the `tensorrt` extra); without it the tensorrt row falls
# back to the next backend and the table says so (requested != used).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$(mktemp -d /tmp/vsr-gpu-bench.XXXX)}"
frames="${FRAMES:-60}"
sizes="${SIZES:-540p:960x540 1080p:1920x1080}"   # name:WxH of the input clips
device="${DEVICE:-cuda}"; precision="${PRECISION:-fp16}"
backends="${BACKENDS:-eager,compile,tensorrt}"
export VSR_CACHE_DIR="${VSR_CACHE_DIR:-$out/cache}"
mkdir -p "$out"

if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then   # no network on the GPU machine
    # module:package pairs; torch is expected on the machine already
    for pair in av:av click:click safetensors:safetensors numpy:numpy \
                torch_tensorrt:torch-tensorrt; do
        python -c "import ${pair%%:*}" 2>/dev/null ||
            pip install -q --no-index --find-links "$WHEELS" "${pair##*:}" || true
    done
    python -c "import vsr.cli.main" 2>/dev/null ||
        pip install -q --no-index --no-deps -e "$here"
fi
python -c "import vsr.cli.main" || { echo "vsr is not installed (pip install -e .)"; exit 1; }
python - <<'PY'
import importlib.util as u, torch
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CUDA unavailable)")
print("torch", torch.__version__, "| torch-tensorrt",
      "present" if u.find_spec("torch_tensorrt") else "NOT installed")
PY

model="${MODEL:-}"
if [ -z "$model" ]; then
    model="$(python - "$out" <<'PY'
import sys, torch
from vsr.models import DEFAULT_MODEL, REGISTRY, CheckpointInfo, create_model, save_model
spec = REGISTRY.get(DEFAULT_MODEL)
if spec.pretrained:
    print(DEFAULT_MODEL)
else:
    torch.manual_seed(0)
    net = create_model(DEFAULT_MODEL, pretrained=False)
    path = f"{sys.argv[1]}/{DEFAULT_MODEL}-random.safetensors"
    save_model(path, net, CheckpointInfo(arch=spec.arch, hparams=dict(net.hparams),
                                         scale=spec.scale, name=DEFAULT_MODEL))
    print(path)
PY
)"
fi
echo "model: $model"

# Synthetic clips (moving gradients plus noise), written with PyAV: no ffmpeg binary needed.
python - "$out" "$frames" $sizes <<'PY'
import sys, av, numpy as np
out, n = sys.argv[1], int(sys.argv[2])
for spec in sys.argv[3:]:
    name, size = spec.split(":")
    w, h = map(int, size.split("x"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(f"{out}/{name}.mp4", "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(n):
            img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy + 6 * i) % 256], -1)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
PY

names=""
for spec in $sizes; do
    res="${spec%%:*}"; names="$names $res"
    echo "== $res" >&2
    vsr -v bench --input "$out/$res.mp4" -m "$model" --device "$device" \
        --precision "$precision" --frames "$frames" --backend "$backends" \
        --codec "${CODEC:-libx264}" --preset "${PRESET:-ultrafast}" --json \
        > "$out/$res.json" 2> "$out/$res.log" || { tail -5 "$out/$res.log"; exit 1; }
done

python - "$out" $names <<'PY'
import json, sys, torch
out = sys.argv[1]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
print(f"\n{gpu}, torch {torch.__version__}")
print(f"{'input':<22}{'requested':<11}{'used':<10}{'model fps':>10}{'pipeline fps':>14}"
      f"{'prepare s':>11}{'max err':>10}")
for res in sys.argv[2:]:
    data = json.load(open(f"{out}/{res}.json"))
    for r in data.get("backends", [data]):
        size = f"{r['size_in'][1]}p->{r['size_out'][1]}p {r['precision']}"
        err = "-" if r["max_error"] is None else f"{r['max_error']:.1e}"
        print(f"{size:<22}{r['requested']:<11}{r['backend']:<10}{r['model_fps']:>10.1f}"
              f"{r['pipeline_fps']:>14.1f}{r['prepare_seconds']:>11.1f}{err:>10}")
print(f"(JSON and logs in {out})")
PY
