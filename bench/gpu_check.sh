#!/usr/bin/env bash
# The one prepared call for a GPU machine: the CUDA tests, then the fp16 benchmark
# (bench/gpu_fp16.py). Everything it writes goes under ${OUT:-bench/results/gpu}.
#
#   bash bench/gpu_check.sh                  on a GPU box with a package index: pip installs what is missing
#   bash bench/gpu_check.sh --fetch-wheels   here, before a call to a lent machine that reaches no index:
#                                            downloads our grpc line (cp312 wheels) into .whl/
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=590)
#   bash bench/gpu_check.sh --bench-only --parts served --rounds 3
#                                            no CUDA tests; the rest goes to bench.gpu_fp16
#
# On the lent machine the image's own python3, torch and OpenCV are used; the carried
# wheels go to a private site folder, and the package is linked there in the layout
# pyproject.toml maps (proto/ server/ client/ quant/ -> edgeinfer.*), so nothing is built.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    for pkg in grpcio==1.81.2 protobuf==6.33.6 grpcio-health-checking==1.81.1 grpcio-reflection==1.81.1 \
        grpc-interceptor==0.15.4; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$pkg" || exit 1
    done
    ls .whl
    exit 0
fi

OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/gpu.txt"

if [[ -d .whl ]]; then
    SITE=/tmp/edgeinfer-site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
    mkdir -p "$SITE/edgeinfer"
    for part in proto server client quant; do ln -sfn "$PWD/$part" "$SITE/edgeinfer/$part"; done
    export PYTHONPATH="$SITE"
else
    python3 -m pip install -q -e ".[server,camera]" pytest pytest-timeout matplotlib 2>&1 | tail -2
fi
python3 -c "import grpc, google.protobuf, edgeinfer.server; print('grpc', grpc.__version__, 'protobuf', \
google.protobuf.__version__)" 2>&1 | tee -a "$OUT/gpu.txt" || exit 1

tests_rc=0
if [[ "${1:-}" == "--bench-only" ]]; then
    shift
else
    timeout 180 python3 -m pytest -v -p no:cacheprovider -m cuda tests/server/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
    tests_rc=${PIPESTATUS[0]}
    # A measurement, not a test: does a bare nvJPEG decode on the model's stream corrupt it here?
    timeout 120 python3 -m bench.nvjpeg_hazard 2>&1 | tee "$OUT/nvjpeg_hazard.json"
fi
timeout 390 python3 -m bench.gpu_fp16 --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_fp16.log"
bench_rc=${PIPESTATUS[0]}
echo "cuda tests: exit $tests_rc; bench: exit $bench_rc"
exit $((tests_rc || bench_rc))
