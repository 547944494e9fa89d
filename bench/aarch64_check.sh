#!/usr/bin/env bash
# Does every dependency of the board extra have an aarch64 wheel that pulls no CUDA? (issue 27, item 5)
#
#   bash bench/aarch64_check.sh [PYTHON_VERSION]      default 3.11 (Debian bookworm's python3, Raspberry Pi OS)
#
# Builds edgeinfer's own wheel (pure Python), then asks pip for the whole [edge] closure as binary
# wheels for manylinux_2_28_aarch64 (glibc 2.28+: Debian 10+, Ubuntu 20.04+, Raspberry Pi OS), and
# fails if a package has no such wheel or if anything of torch, CUDA or triton comes with it.
# manylinux2014 (glibc 2.17) alone is not enough: onnxruntime >= 1.17 ships 2_28 aarch64 wheels only.
# Writes the wheel list to ${OUT:-bench/results}/aarch64_wheels.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-3.11}"
OUT="${OUT:-bench/results}"
PIP=(.venv/bin/python -m pip)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$tmp/own" . 2> >(grep -v "^WARNING: Location" >&2)
wheel="$(ls "$tmp"/own/edgeinfer-*.whl)"
"${PIP[@]}" download -q --dest "$tmp/wheels" --only-binary :all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform linux_aarch64 \
    --python-version "$PY" --implementation cp "${wheel}[edge]" 2> >(grep -v "^WARNING: Location" >&2)

mkdir -p "$OUT"
{
    echo "# pip download ${wheel##*/}[edge] --platform manylinux_2_28_aarch64 --python-version $PY --only-binary :all:"
    for w in "$tmp"/wheels/*.whl; do
        printf '%8.1f MB  %s\n' "$(echo "$(stat -c %s "$w") / 1048576" | bc -l)" "${w##*/}"
    done
} | tee "$OUT/aarch64_wheels.txt"

count=$(ls "$tmp"/wheels/*.whl | wc -l)
total=$(du -cm "$tmp"/wheels/*.whl | tail -1 | cut -f1)
echo "$count wheels, $total MB" | tee -a "$OUT/aarch64_wheels.txt"
if ls "$tmp"/wheels | grep -Eiq '^(torch|nvidia|triton|cuda)'; then
    echo "FAIL: the board extra pulls torch/CUDA on aarch64" | tee -a "$OUT/aarch64_wheels.txt"
    exit 1
fi
if ls "$tmp"/wheels/*.whl | grep -v "edgeinfer-" | grep -Ev '(aarch64|none-any)\.whl$'; then
    echo "FAIL: a wheel above is not for aarch64" | tee -a "$OUT/aarch64_wheels.txt"
    exit 1
fi
echo "OK: every package of edgeinfer[edge] has an aarch64 wheel, none of them torch or CUDA" | tee -a "$OUT/aarch64_wheels.txt"
