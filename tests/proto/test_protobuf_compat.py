"""The generated code (protobuf 6.x toolchain) also runs on a protobuf 7 runtime: edgeinfer.v1 and KServe v2."""

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
from edgeinfer.proto import kserve_v2_pb2 as v2, kserve_v2_pb2_grpc
req = v2.ModelInferRequest(model_name='squeezenet', id='7')
req.inputs.add(name='IMAGE', datatype='BYTES', shape=[1, 1])
req.raw_input_contents.append(bytes([2, 0, 0, 0, 255, 216]))
req.outputs.add(name='PROBABILITIES').parameters['classification'].int64_param = 5
again = v2.ModelInferRequest.FromString(req.SerializeToString())
assert again.id == '7' and list(again.inputs[0].shape) == [1, 1]
assert again.outputs[0].parameters['classification'].int64_param == 5
assert v2.ModelConfig(max_batch_size=16).max_batch_size == 16
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
