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
# pip's notes that are not about this project stay quiet: running as root (containers, CI),
# scripts outside PATH; set through the environment, which a pip too old to know them ignores.
export PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
# ... and its warnings about this machine's package index configuration.
pip_install() { "${PIP[@]}" "$@" 2> >(grep -v "^WARNING: Location" >&2); }

# The torch release the project is tested with. On x86-64 this is the CUDA build
# (it runs on the CPU too); ARM boards get the CPU build of an older release.
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *)             TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing ${TORCH[*]} (large; once)"
  pip_install "${TORCH[@]}"
fi
echo "setup: installing edgeinfer[dev] (editable)"
pip_install -e ".[dev]"
