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


def test_kserve_v2_module_is_the_spec_package_in_a_pool_of_its_own() -> None:
    from google.protobuf import descriptor_pool

    from edgeinfer.proto import kserve_v2_pb2 as v2
    from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc

    assert v2.DESCRIPTOR.package == "inference"
    assert v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == "inference.GRPCInferenceService"
    assert hasattr(v2_grpc, "GRPCInferenceServiceStub")
    # Not in protobuf's default pool, where tritonclient (or KServe, MLServer) registers the same names.
    assert v2.DESCRIPTOR.pool is not descriptor_pool.Default()
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName(v2.DESCRIPTOR.name)


def _fields(message) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message.fields}


def test_kserve_v2_messages_match_tritonclients_on_the_wire() -> None:
    """Every field we declare has tritonclient's number and type, in every message we share; both import at once."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the [dev] extra")
    from tritonclient.grpc import model_config_pb2, service_pb2

    from edgeinfer.proto import kserve_v2_pb2 as v2

    theirs = {**model_config_pb2.DESCRIPTOR.message_types_by_name, **service_pb2.DESCRIPTOR.message_types_by_name}

    def walk(ours, their) -> int:
        checked = 0
        their_fields = _fields(their)
        for name, spec in _fields(ours).items():
            assert their_fields.get(name) == spec, (
                f"{ours.full_name}.{name}: ours {spec}, theirs {their_fields.get(name)}"
            )
            checked += 1
        for nested in ours.nested_types:
            checked += walk(nested, their.nested_types_by_name[nested.name])
        return checked

    checked = sum(walk(m, theirs[name]) for name, m in v2.DESCRIPTOR.message_types_by_name.items())
    assert checked > 100
    for name, enum in v2.DESCRIPTOR.enum_types_by_name.items():
        their = model_config_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in their.values}
    ours = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        their_method = their_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            their_method.input_type.full_name,
            their_method.output_type.full_name,
        )
