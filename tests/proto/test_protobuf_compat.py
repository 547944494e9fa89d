"""The generated code (protobuf 6.x toolchain) also runs on a protobuf 7 runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys, google.protobuf
assert google.protobuf.__version__.startswith('7.'), google.protobuf.__version__
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.client import EdgeClient, FrameResult
r = pb.StreamResponse(sequence=3, prediction=pb.Prediction(classes=[pb.Class(index=1, label='goldfish')]))
back = FrameResult.from_proto(pb.StreamResponse.FromString(r.SerializeToString()))
assert back.prediction.top1.label == 'goldfish' and back.sequence == 3
assert 'torch' not in sys.modules
print('ok', google.protobuf.__version__)
"""


def test_client_runs_on_protobuf_7() -> None:
    location = os.environ.get("EDGEINFER_PROTOBUF7_DIR")
    if not location:
        pytest.skip("EDGEINFER_PROTOBUF7_DIR not set (scripts/test.sh sets it up)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([location, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok 7.")
