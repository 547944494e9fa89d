#!/usr/bin/env bash
# The main job, offline: quantize SqueezeNet to int8 (once), start the daemon,
# stream a generated sample clip through it and print top-k per frame.
# Random weights (seed 0): the labels are real ImageNet names but the predictions
# mean nothing until you pass real weights (WEIGHTS=imagenet or a state_dict path).
# Extra args go to edgeclient (e.g. --json, --drop-policy all, --save out.mp4).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2

PORT=${PORT:-50051}
OUT=demo-out
mkdir -p "$OUT"
.venv/bin/python -m edgeinfer.media.sample "$OUT/sample.mp4" --frames 90 >/dev/null

WEIGHTS=${WEIGHTS:-random}
if [ "$WEIGHTS" = random ]; then
  echo "demo: the model's weights are RANDOM (seed 0): its labels are real ImageNet names but mean nothing." >&2
  echo "demo: for real predictions: WEIGHTS=imagenet scripts/demo.sh (needs the torchvision weights once, online)" >&2
fi
REPO="$OUT/model-repo-$(printf %s "$WEIGHTS" | tr -c 'A-Za-z0-9_-' _)"  # one per WEIGHTS: switching re-quantizes
# (Re-)quantize unless an artifact is there that records its model file's SHA-256 (older ones do not,
# and the daemon refuses them).
if ! grep -qs '"sha256"' "$REPO"/squeezenet1_0/int8-*/edgeinfer.json; then
  echo "demo: quantizing SqueezeNet 1.0 to int8 (calibrating on the sample clip)" >&2
  .venv/bin/edgequant --model squeezenet --weights "$WEIGHTS" --seed 0 --calib "$OUT/sample.mp4" --out "$REPO" >&2
fi

.venv/bin/edgeserver --model squeezenet --precision int8 --repository "$REPO" \
  --port "$PORT" >"$OUT/edgeserver.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "demo: edgeserver (pid $SERVER) starting on port $PORT; log in $OUT/edgeserver.log" >&2

.venv/bin/edgeclient --server "localhost:$PORT" --model squeezenet --video "$OUT/sample.mp4" --wait 180 "$@"
