#!/usr/bin/env bash
# Creates .venv (when missing) and installs edgeinfer, editable, with what one mode needs:
#   scripts/setup.sh demo   the [quant] extra (daemon, client, quantizer): what scripts/demo.sh runs
#   scripts/setup.sh test   the [dev] extra and the C++ example's toolchain: what scripts/test.sh runs (default)
# Safe to re-run: it installs only what is missing or changed (a stamp of pyproject.toml's hash
# per mode skips pip when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-test}
case "$MODE" in
  demo) EXTRA=quant ;;
  test) EXTRA=dev ;;
  *) echo "setup: unknown mode '$MODE': use demo or test" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

if [ "$MODE" = test ]; then
  # The C++ example's toolchain (tests/examples/test_cpp_client.py builds examples/cpp and
  # skips without it). Installed only where we can: as root on Debian/Ubuntu (CI), and
  # only what is missing; elsewhere say what to install and go on.
  CPP_PKGS=(cmake g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc)
  if command -v dpkg-query >/dev/null; then
    missing=()
    for pkg in "${CPP_PKGS[@]}"; do
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing the C++ example's toolchain: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
      else
        echo "setup: C++ example toolchain missing (its tests will skip): sudo apt-get install ${missing[*]}"
      fi
    fi
  fi
fi

# Torch's import check and `pip install -e` take seconds even when nothing changed: both are skipped
# while the stamp says pyproject.toml is the one installed (written after a complete install; a
# test install covers the demo: [dev] includes [quant]).
hash=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
current() { [ "$(cat ".venv/.edgeinfer-setup-$1" 2>/dev/null)" = "$hash" ] && [ -x .venv/bin/edgeserver ]; }
if current "$MODE" || { [ "$MODE" = demo ] && current test; }; then
  exit 0
fi

PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# pip's notes that are not about this project stay quiet: running as root (containers, CI),
# scripts outside PATH; set through the environment, which a pip too old to know them ignores.
export PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
# ... and its warnings about this machine's package index configuration.
pip_install() { "${PIP[@]}" "$@" 2> >(grep -v "^WARNING: Location" >&2); }

# The torch release the project is tested with. On x86-64 this is the CUDA build (it runs on the
# CPU too) and it stays so on a CPU-only machine: with this pin, `import torch` loads the CUDA
# libraries (cuDNN, cuBLAS, ...) that the wheel depends on, so they cannot be left out; PyTorch's
# CPU-only wheels come from another index (download.pytorch.org/whl/cpu), which this setup does not
# assume is reachable. ARM boards get the CPU build of an older release.
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
  *)             TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing ${TORCH[*]} (large; once)"
  pip_install "${TORCH[@]}"
fi

echo "setup: installing edgeinfer[$EXTRA] (editable)"
pip_install -e ".[$EXTRA]"
echo "$hash" >".venv/.edgeinfer-setup-$MODE"
