#!/usr/bin/env bash
# Creates .venv (when missing) and installs edgeinfer with every extra, editable.
# Safe to re-run: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# The torch release the project is tested with. On x86-64 this is the CUDA build
# (it runs on the CPU too); ARM boards get the CPU build of an older release.
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *)             TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing ${TORCH[*]} (large; once)"
  "${PIP[@]}" "${TORCH[@]}"
fi
echo "setup: installing edgeinfer[dev] (editable)"
"${PIP[@]}" -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
