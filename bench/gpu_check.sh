#!/usr/bin/env bash
# The one prepared call for a lent GPU machine: install, run the CUDA tests, then a
# short fp16 serving benchmark. Everything it writes goes under ${OUT:-bench/results}.
#   run(command="bash bench/gpu_check.sh", timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
# Keep the machine's own torch when it has a CUDA one; install the rest.
python3 -m pip install -q -e ".[server,camera]" pytest pytest-timeout 2>&1 | tail -2
python3 -m pytest -v -m cuda tests/server/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
python3 bench/gpu_fp16.py --out "$OUT" 2>&1 | tee "$OUT/gpu_fp16.log"
exit "$tests_rc"
