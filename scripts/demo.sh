#!/usr/bin/env bash
# The main job, offline: start the daemon, stream a generated sample clip through
# SqueezeNet and print top-k per frame. Random weights (seed 0): the labels are
# real ImageNet names but the predictions mean nothing until you pass real weights.
# Extra args go to edgeclient (e.g. --json, --drop-policy all, --save out.mp4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2

PORT=${PORT:-50051}
OUT=demo-out
mkdir -p "$OUT"
.venv/bin/python -m edgeinfer.client.sample "$OUT/sample.mp4" --frames 90 >/dev/null

.venv/bin/edgeserver --model squeezenet --weights random --seed 0 --port "$PORT" >"$OUT/edgeserver.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "demo: edgeserver (pid $SERVER) starting on port $PORT; log in $OUT/edgeserver.log" >&2

.venv/bin/edgeclient --server "localhost:$PORT" --model squeezenet --video "$OUT/sample.mp4" --wait 180 "$@"
