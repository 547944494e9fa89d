"""The checked-in generated code matches proto/edgeinfer.proto, and imports as our package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools ([dev] extra) regenerates the code")
    gen = _generate_module()
    for path in gen.generate(tmp_path):
        checked_in = ROOT / "proto" / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in} is stale: run `python proto/generate.py` and commit the result"
        )


def test_generated_modules_import_as_package_and_round_trip() -> None:
    from edgeinfer.proto import edgeinfer_pb2 as pb
    from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

    assert pb.DESCRIPTOR.package == "edgeinfer.v1"
    assert hasattr(pb_grpc, "EdgeInferenceStub")
    msg = pb.StreamRequest(frame=pb.Frame(sequence=7, capture_time_ns=123, image=pb.Image(jpeg=b"\xff\xd8")))
    back = pb.StreamRequest.FromString(msg.SerializeToString())
    assert back.frame.sequence == 7 and back.frame.image.jpeg == b"\xff\xd8"
    assert back.WhichOneof("request") == "frame"
