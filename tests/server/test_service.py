"""The daemon over real gRPC on localhost:0: answers, statuses, health, reflection."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgeinfer.client import EdgeClient, EdgeInferError, Frame
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server import Daemon, WeightsSource, load_model
from edgeinfer.server.loading import auto_placement
from edgeinfer.server.options import PreprocessOn
from fakes import SlowRunner, fake_model
from helpers import SMALL_FRAME_LIMIT, MakeDaemon, jpeg, synthetic_frame

GOOD = synthetic_frame(5)


def test_model_metadata(client: EdgeClient) -> None:
    [info] = client.models()
    assert (info.name, info.precision, info.device) == ("squeezenet1_0", "fp32", "cpu")
    assert info.input_size == (224, 224) and info.num_classes == 1000
    assert info.weights == "random:seed=0" and info.aliases == ("squeezenet",)
    assert client.model("squeezenet").name == "squeezenet1_0"
    # The CPU default: preprocessing on the inference thread when the model's threads take every core
    # ("worker" is the wire's name for it), on the stream's reader when they leave one; batch sizes measured at load.
    auto = auto_placement(torch.device("cpu"), 2)  # the daemon fixture loads with 2 threads (a test may change it)
    assert info.preprocess_on == {PreprocessOn.INFERENCE: "worker", PreprocessOn.STREAM: "stream"}[auto]
    assert info.batch_sizes[0] == 1 and info.max_batch_size == info.batch_sizes[-1] <= 8


def test_auto_placement_decodes_beside_the_model_only_on_a_free_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu = torch.device("cpu")
    assert auto_placement(cpu, 4) is PreprocessOn.INFERENCE  # the model's team takes every core
    assert auto_placement(cpu, 8) is PreprocessOn.INFERENCE
    assert auto_placement(cpu, 3) is PreprocessOn.STREAM  # a core to spare: the reader decodes meanwhile
    assert auto_placement(torch.device("cuda"), 4) is PreprocessOn.STREAM


def test_bad_inputs_in_a_live_stream_get_their_codes_and_the_stream_goes_on(client: EdgeClient) -> None:
    good = jpeg(GOOD)
    wrong_raw = pb.Image(raw=pb.RawImage(height=10, width=10, data=b"\0" * 7))
    frames: list[object] = [
        good,
        b"\xff\xd8\xff\xe0 this is not really a jpeg",  # corrupt JPEG
        good,
        Frame(np.zeros((0, 0, 3), np.uint8)),  # replaced below by a mis-sized raw frame
        good,
        b"",  # empty frame
        good,
        b"\xff\xd8" + b"\0" * (SMALL_FRAME_LIMIT + 1),  # over --max-frame-bytes
        good,
    ]
    results = list(_stream_raw_messages(client, frames, {3: wrong_raw}))
    assert [r.sequence for r in results] == list(range(9))
    kinds = [r.WhichOneof("result") for r in results]
    assert kinds == [
        "prediction",
        "error",
        "prediction",
        "error",
        "prediction",
        "error",
        "prediction",
        "error",
        "prediction",
    ]
    codes = {r.sequence: grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in results if r.sequence in (1, 3, 5)}
    codes[7] = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert {r.sequence: r.error.code for r in results if r.HasField("error")} == codes
    assert "could not be decoded" in results[1].error.message
    assert "needs 300 bytes, got 7" in results[3].error.message
    assert "no image data" in results[5].error.message
    assert "--max-frame-bytes" in results[7].error.message
    # The same good frame gives the same answer before and after the bad ones.
    tops = {tuple(c.index for c in r.prediction.classes) for r in results if r.HasField("prediction")}
    assert len(tops) == 1


def _stream_raw_messages(
    client: EdgeClient, frames: list[object], overrides: dict[int, pb.Image]
) -> Iterator[pb.StreamResponse]:
    """Like client.stream, but lets a test put any Image on the wire."""
    from edgeinfer.client.frames import Encoder, as_frame

    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(
            config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=5, drop_policy=pb.DROP_POLICY_ALL)
        )
        for i, item in enumerate(frames):
            image = overrides.get(i) or Encoder().to_proto(as_frame(item, i))  # type: ignore[arg-type]
            yield pb.StreamRequest(frame=pb.Frame(sequence=i, image=image))

    return iter(client._stub.StreamClassify(requests(), timeout=60))


def test_other_streams_keep_serving_while_one_sends_garbage(client: EdgeClient, target: str) -> None:
    good = [GOOD] * 15
    results: dict[str, list] = {}

    def healthy() -> None:
        with EdgeClient(target) as other:
            results["healthy"] = list(other.stream(good, drop_policy="all", timeout=60))

    t = threading.Thread(target=healthy)
    t.start()
    bad = list(client.stream([b"\xff\xd8junk"] * 15, drop_policy="all", timeout=60))
    t.join(60)
    assert [r.kind for r in bad] == ["error"] * 15
    assert all(r.error_code == grpc.StatusCode.INVALID_ARGUMENT for r in bad)
    assert [r.kind for r in results["healthy"]] == ["prediction"] * 15


@pytest.mark.parametrize(
    ("kwargs", "code", "text"),
    [
        ({"model": "alexnet"}, grpc.StatusCode.NOT_FOUND, "unknown model 'alexnet'"),
        ({"model": "resnet50"}, grpc.StatusCode.NOT_FOUND, "start edgeserver with --model resnet50"),
        (
            {"model": "squeezenet", "precision": "int8"},
            grpc.StatusCode.NOT_FOUND,
            "served in fp32, not int8: ask for --precision fp32",
        ),
        ({"top_k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between 1 and 1000"),
        ({"top_k": 1001}, grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between 1 and 1000"),
    ],
)
def test_stream_level_errors(client: EdgeClient, kwargs: dict, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(EdgeInferError) as info:
        list(client.stream([GOOD], **kwargs))
    assert info.value.code == code and text in info.value.details
    with pytest.raises(EdgeInferError) as info:
        client.classify(GOOD, **kwargs)
    assert info.value.code == code


def test_protocol_misuse(client: EdgeClient) -> None:
    stub: pb_grpc.EdgeInferenceStub = client._stub
    frame = pb.StreamRequest(frame=pb.Frame(sequence=0, image=pb.Image(jpeg=jpeg(GOOD))))
    config = pb.StreamRequest(config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamClassify(iter([frame]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message of a stream must be a StreamConfig" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamClassify(iter([config, frame, config, frame]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the first message" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no image" in info.value.details()


def test_a_call_without_a_deadline_is_answered(client: EdgeClient, target: str) -> None:
    """Plain stubs (grpcurl, a robot's C++ client) often set no deadline; gRPC then reports ~9e18 s left."""
    request = pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), image=pb.Image(jpeg=jpeg(GOOD)), top_k=3)
    with grpc.insecure_channel(target) as channel:
        answer = pb_grpc.EdgeInferenceStub(channel).Classify(request)  # no timeout
    expected = client.classify(GOOD, top_k=3)
    assert [c.index for c in answer.classes] == [c.index for c in expected.classes] and len(answer.classes) == 3


def test_unary_and_stream_agree_and_pixel_orders_match(client: EdgeClient) -> None:
    unary = client.classify(GOOD, top_k=5, encoding="raw")
    [streamed] = list(client.stream([Frame(GOOD)], top_k=5, encoding="raw", drop_policy="all"))
    rgb = client.classify(Frame(np.ascontiguousarray(GOOD[..., ::-1]), bgr=False), top_k=5, encoding="raw")
    assert streamed.prediction is not None
    assert unary.classes == streamed.prediction.classes == rgb.classes
    assert unary.timings.total_ms > 0 and unary.batch_size == 1


def test_max_streams_is_enforced_and_released(target: str) -> None:

    gate = threading.Event()

    def slow_frames() -> Iterator[np.ndarray]:
        yield GOOD
        gate.wait(30)

    clients = [EdgeClient(target) for _ in range(9)]
    streams = [c.stream(slow_frames(), drop_policy="all") for c in clients[:8]]
    try:
        firsts = [next(s) for s in streams]  # 8 open streams, each answered once
        assert all(r.kind == "prediction" for r in firsts)
        with pytest.raises(EdgeInferError) as info:
            list(clients[8].stream([GOOD]))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams 8" in info.value.details
    finally:
        gate.set()
        for s in streams:
            list(s)
        for c in clients:
            c.close()
    with EdgeClient(target) as c:  # slots are given back
        assert [r.kind for r in c.stream([GOOD], drop_policy="all")] == ["prediction"]


def test_health_reflection_and_loading_state(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
    health = health_pb2_grpc.HealthStub(channel)
    service = "edgeinfer.v1.EdgeInference"
    for name in ("", service):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
    with EdgeClient(f"127.0.0.1:{daemon.port}") as c, pytest.raises(EdgeInferError) as info:
        c.model("squeezenet")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details

    daemon.add_model(load_model("squeezenet1_1", weights=WeightsSource("random", seed=3), warmup=False))
    daemon.mark_ready()
    assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    channel.close()


def test_a_call_waiting_on_a_hung_model_holds_no_thread_after_the_drain(make_daemon: MakeDaemon) -> None:
    """A call waits for its model on the event loop, holding no thread: the drain cancels it after its grace,
    and nothing of the daemon is left running for the command line to wait on (busy_handlers())."""
    entered = threading.Event()

    class Hung(SlowRunner):
        def infer(self, batch, k):  # type: ignore[no-untyped-def]
            entered.set()
            return super().infer(batch, k)

    runner = Hung()
    runner.gate.clear()  # the forward pass hangs until the gate opens
    daemon = make_daemon(fake_model(runner))
    request = pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), image=pb.Image(jpeg=jpeg(GOOD)), top_k=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
    call = pb_grpc.EdgeInferenceStub(channel).Classify.future(request)  # no deadline
    try:
        assert entered.wait(10)
        daemon.stop(grace=0.1)
        assert call.exception(5).code() == grpc.StatusCode.UNAVAILABLE  # cancelled by the drain
        assert daemon.busy_handlers(timeout=5) == []  # the model still hangs: nothing waits on it
    finally:
        runner.gate.set()
        channel.close()


def test_an_all_stream_sends_at_most_max_in_flight_frames_ahead(make_daemon: MakeDaemon) -> None:
    """A folder read as fast as gRPC takes it is not queued whole in the transport: the source is read
    only as answers come back, and the daemon is still kept busy (the window fills)."""
    from edgeinfer.client.streaming import MAX_IN_FLIGHT

    daemon = make_daemon(fake_model(SlowRunner(delay_s=0.005)))
    data, taken, leads = jpeg(GOOD), 0, []

    def folder() -> Iterator[bytes]:
        nonlocal taken
        for _ in range(60):
            taken += 1
            yield data

    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        for answered, result in enumerate(client.stream(folder(), "squeezenet", drop_policy="all")):
            assert result.prediction is not None and result.sequence == answered
            leads.append(taken - answered)  # read from the source and not answered before this one
    assert len(leads) == 60
    # In flight, at most MAX_IN_FLIGHT; besides them, one frame in the hand-over, one the pump holds
    # and one sent in the room this answer made. Unbounded, all 60 would be out before the first answer.
    assert MAX_IN_FLIGHT <= max(leads) <= MAX_IN_FLIGHT + 3, leads


def test_metrics_count_answers(client: EdgeClient) -> None:
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value(
            "edgeinfer_frames_total", {"model": "squeezenet1_0", "precision": "fp32", "outcome": outcome}
        )
        return value or 0.0

    before_ok, before_err = count("predicted"), count("error")
    list(client.stream([GOOD, b"\xff\xd8bad", GOOD], drop_policy="all"))
    assert count("predicted") - before_ok == 2 and count("error") - before_err == 1


def test_a_client_that_walks_away_releases_its_stream(daemon: Daemon, target: str) -> None:
    import time

    def endless() -> Iterator[np.ndarray]:
        while True:
            yield GOOD

    with EdgeClient(target) as c:
        stream = c.stream(endless(), drop_policy="latest")
        # `latest` may drop the first frames (the sender outpaces the model): wait for a prediction.
        kinds = []
        for r in stream:
            kinds.append(r.kind)
            if r.kind == "prediction" or len(kinds) == 500:
                break
        assert kinds[-1] == "prediction" and set(kinds[:-1]) <= {"dropped"}
        assert daemon.servicer.open_streams >= 1
        stream.close()  # cancels the RPC mid-stream
    deadline = time.monotonic() + 10
    while daemon.servicer.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.servicer.open_streams == 0
