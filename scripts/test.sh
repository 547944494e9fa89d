#!/usr/bin/env bash
# The test command: installs what the tests need, then runs all of them
# (slow ones included; CUDA ones skip without a GPU). Extra args go to pytest.
#   scripts/test.sh --fast     the inner loop: everything not marked slow
#   PYTEST_PROCESSES=1 scripts/test.sh ...   one process (default 2: pytest-xdist)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

# The client must also import under protobuf 7 (a robot's newer stack): keep a
# protobuf 7 runtime aside for tests/proto/test_protobuf_compat.py.
if [ ! -d .venv/protobuf7/google/protobuf ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --target .venv/protobuf7 "protobuf>=7,<8" 2> >(grep -v "^WARNING: Location" >&2)
fi
export EDGEINFER_PROTOBUF7_DIR="$PWD/.venv/protobuf7"

.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -n "${PYTEST_PROCESSES:-2}" "$@"
