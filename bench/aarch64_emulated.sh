#!/usr/bin/env bash
# The board's daemon on aarch64, under emulation: Debian's arm64 Python run by qemu-user-static, the
# [edge] closure installed for manylinux_2_28_aarch64, serving an ONNX artifact; then the same photo
# crops through it and through the x86 daemon, top-5 compared (issue 27, item 5).
#
#   bash bench/aarch64_emulated.sh REPO [MODEL] [FRAMES]    REPO holds MODEL's onnx-int8 artifact
#                                                           (default squeezenet1_0, 8 frames)
# Needs: qemu-user-static and debootstrap (apt-get install qemu-user-static debootstrap), root for
# debootstrap, deb.debian.org and the package index. Caches the arm64 root in ${ARM_ROOT:-.arm64}.
#
# ONNX Runtime >= 1.2x crashes at import under qemu-user (SIGSEGV): its cpuinfo library reads
# /proc/cpuinfo, which under qemu-user is the host's x86 one, finds no ARM core in it and indexes
# an empty table. qemu's -L prefix also redirects file opens: a plausible ARM /proc/cpuinfo inside
# the root (Neoverse-N1 cores, as many as the host has) is what the emulated process reads, and
# nothing outside it changes (no bind mount, no namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(realpath "${1:?usage: bench/aarch64_emulated.sh REPO [MODEL] [FRAMES]}")"
MODEL="${2:-squeezenet1_0}"
FRAMES="${3:-8}"
ARM="$(realpath -m "${ARM_ROOT:-.arm64}")"
ROOTFS="$ARM/rootfs"
OUT="${OUT:-bench/results}"
PY=.venv/bin/python

if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libstdc++6,libgomp1 \
        bookworm "$ROOTFS" http://deb.debian.org/debian
    # --foreign unpacks the base only; the included packages' debs are unpacked here (no second stage:
    # nothing is configured, the interpreter and its libraries are all the daemon needs)
    for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOTFS"; done
fi
cpus=$(( $(cut -d- -f2 /sys/devices/system/cpu/possible) + 1 ))
for i in $(seq 0 $((cpus - 1))); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$ROOTFS/proc/cpuinfo"

rm -rf "$ARM/own" && $PY -m pip wheel -q --no-deps --no-build-isolation -w "$ARM/own" . 2> >(grep -v "^WARNING: Location" >&2)
wheel="$(ls "$ARM"/own/edgeinfer-*.whl)"
$PY -m pip install -q --upgrade --target "$ROOTFS/opt/edge" --only-binary :all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    "${wheel}[edge]" 2> >(grep -v "^WARNING: Location" >&2)

arm_py=(qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11")
"${arm_py[@]}" -c "import sys, platform; sys.path.insert(0, '/opt/edge'); import onnxruntime, edgeinfer; \
print('emulated:', platform.machine(), 'python', platform.python_version(), 'onnxruntime', onnxruntime.__version__)"

serve() {  # serve PORT LOG COMMAND...: start a daemon on MODEL's int8 ONNX artifact
    local port=$1 log=$2; shift 2
    "$@" --model "$MODEL:int8" --runtime onnxruntime --repository "$REPO" --port "$port" --threads 2 \
        --batch-sizes 1 --log-level warning > "$log" 2>&1 &
}
arm_port=$($PY -c "from edgeinfer.server.workers import free_port; print(free_port())")
x86_port=$($PY -c "from edgeinfer.server.workers import free_port; print(free_port())")
started=$(date +%s.%N)
serve "$arm_port" "$ARM/daemon-arm64.log" "${arm_py[@]}" -c \
    "import sys; sys.path.insert(0, '/opt/edge'); from edgeinfer.server.cli_support import edgeserver; sys.exit(edgeserver())"
arm_pid=$!
serve "$x86_port" "$ARM/daemon-x86.log" .venv/bin/edgeserver
x86_pid=$!
trap 'kill $arm_pid $x86_pid 2>/dev/null || true' EXIT

mkdir -p "$OUT"
{
    echo "# bench/aarch64_emulated.sh $MODEL: the arm64 daemon (qemu-user $(qemu-aarch64-static --version | head -1 | awk '{print $3}')) vs the x86 one, $FRAMES photo crops"
    $PY -m bench.aarch64_compare "127.0.0.1:$x86_port" "127.0.0.1:$arm_port" --model "$MODEL" --frames "$FRAMES" --json
    grep -h "SERVING after" "$ARM/daemon-arm64.log" | sed 's/^/arm64 daemon: /'
    echo "arm64 daemon started $(printf '%.0f' "$(echo "$(date +%s.%N) - $started" | bc)") s before the comparison ended"
} | tee "$OUT/aarch64_emulated.txt"
