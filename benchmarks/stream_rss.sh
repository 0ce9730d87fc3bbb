#!/usr/bin/env bash
# Memory of a long `vsr stream` at a high frame rate: ffmpeg sends 160x120 H.264 + AAC at
# 240 fps over UDP on 127.0.0.1 for SECONDS; vsr upscales it (bicubic x2, dropping what it
# cannot keep up with) into a file; the stream's resident memory is printed every 10 s.
#   bash benchmarks/stream_rss.sh [SECONDS] [PORT]        (ENGINE.md, "Live streams")
# Extra environment for vsr goes in VSR_ENV, e.g. VSR_ENV="MALLOC_ARENA_MAX=2".
set -euo pipefail
secs="${1:-240}"; port="${2:-23461}"; out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
env ${VSR_ENV:-} OMP_NUM_THREADS=1 python -m vsr stream "udp://127.0.0.1:$port?timeout=8000000" \
    "$out/out.ts" --model bicubic --scale 2 --device cpu --timeout 8 --stats-interval 30 \
    2> "$out/stream.log" &
pid=$!
sleep 3
ffmpeg -v error -re -f lavfi -i testsrc2=s=160x120:r=240 -f lavfi -i sine=r=48000 -t "$secs" \
    -c:v libx264 -preset ultrafast -tune zerolatency -c:a aac -f mpegts \
    "udp://127.0.0.1:$port?pkt_size=1316" &
echo "seconds rss_kB"
for i in $(seq 1 $((secs / 10))); do
    sleep 10
    echo "$((i * 10)) $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
done
wait
tail -1 "$out/stream.log"
