#!/usr/bin/env bash
# The main job, offline: quantize SqueezeNet to int8 (once), start the daemon,
# stream a generated sample clip through it and print top-k per frame.
# Random weights (seed 0): the labels are real ImageNet names but the predictions
# mean nothing until you pass real weights (WEIGHTS=imagenet or a state_dict path).
# Extra args go to edgeclient (e.g. --json, --drop-policy all, --save out.mp4).
# PORT=N: the daemon's port (default: a free one, so that another daemon on 50051 is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo >&2

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

# A port nobody listens on (the kernel's pick), unless PORT says one: the demo talks only to its own daemon.
PORT=${PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG="$OUT/edgeserver.log"
.venv/bin/edgeserver --model squeezenet --precision int8 --repository "$REPO" --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
echo "demo: edgeserver (pid $SERVER) starting on port $PORT; log in $LOG" >&2

# Wait for this daemon, not for whatever answers on the port: it says SERVING in its own log once it
# listens there (the port is its alone: edgeserver binds without SO_REUSEPORT) and its model is loaded.
# If it exits first (port taken, a bad artifact), its own error is the demo's.
for _ in $(seq 1 1800); do  # 180 s at most
  if ! kill -0 "$SERVER" 2>/dev/null; then
    status=0
    wait "$SERVER" || status=$?
    echo "demo: edgeserver exited (status $status) before serving:" >&2
    sed 's/^/  /' "$LOG" >&2
    exit 1
  fi
  if grep -q "^edgeserver: SERVING" "$LOG"; then
    break
  fi
  sleep 0.1
done
if ! grep -q "^edgeserver: SERVING" "$LOG"; then
  echo "demo: edgeserver (pid $SERVER) did not serve within 180 s; its log:" >&2
  sed 's/^/  /' "$LOG" >&2
  exit 1
fi
if ! grep -q "^edgeserver: listening on .*:$PORT\b" "$LOG"; then
  echo "demo: edgeserver (pid $SERVER) does not say it listens on port $PORT; its log:" >&2
  sed 's/^/  /' "$LOG" >&2
  exit 1
fi

.venv/bin/edgeclient --server "localhost:$PORT" --model squeezenet --video "$OUT/sample.mp4" --wait 10 "$@"
