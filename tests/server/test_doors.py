"""Issue 26's probe, as tests: no client, with or without a token, holds the daemon's threads, slots or memory.

Each class of the probe runs against one daemon with a token (loopback), bounded in
count and time, while probes check that health Check and ListModels are still
answered. What is asserted is what came back: statuses and their counts, answers,
the daemon's own counters; never a time.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.server import Daemon
from edgeinfer.server.admission import MAX_UNARY_INFER_CALLS, CallKind, default_caps
from edgeinfer.server.app import MESSAGE_OVERHEAD
from edgeinfer.server.loop_session import LoopSession
from edgeinfer.server.security import Tokens
from fakes import SlowRunner, fake_model
from helpers import SMALL_FRAME_LIMIT, jpeg, synthetic_frame

TOKEN = "d00r5-k3y-0f-f0rty-e1ght-ch4racter5-for-the-test"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
TIMEOUT_S = 1.0  # --config-timeout (the body timeout too) and --idle-timeout: short, so holds end quickly
MAX_STREAMS = 16
GOOD = jpeg(synthetic_frame(1, 120, 160))
HEALTH = "/grpc.health.v1.Health/"
EDGE = "/edgeinfer.v1.EdgeInference/"
V2 = "/inference.GRPCInferenceService/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
CAPS = default_caps(MAX_STREAMS)
ident: Callable[[Any], Any] = lambda x: x  # noqa: E731 - raw bytes through, for calls with no message


@pytest.fixture(scope="module")
def runner() -> SlowRunner:
    return SlowRunner()


@pytest.fixture(scope="module")
def daemon(runner: SlowRunner) -> Iterator[Daemon]:
    d = Daemon(
        ["127.0.0.1:0"],
        max_streams=MAX_STREAMS,
        max_frame_bytes=SMALL_FRAME_LIMIT,
        config_timeout=TIMEOUT_S,
        idle_timeout=TIMEOUT_S,
        tokens=Tokens([TOKEN]),
    ).start()
    d.add_model(fake_model(runner))
    d.mark_ready()
    yield d
    d.stop(grace=0.5)


@pytest.fixture
def gate(runner: SlowRunner) -> Iterator[threading.Event]:
    """Set to let the model answer; every test leaves it open."""
    yield runner.gate
    runner.gate.set()


def _target(daemon: Daemon) -> str:
    return f"127.0.0.1:{daemon.port}"


def _probe(daemon: Daemon, checks: int = 5) -> tuple[int, list[str]]:
    """From a fresh connection: health Checks answered SERVING (no token), and ListModels' names (token)."""
    with grpc.insecure_channel(_target(daemon)) as ch:
        check = ch.unary_unary(
            HEALTH + "Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        serving = sum(
            check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            for _ in range(checks)
        )
        models = ch.unary_unary(
            EDGE + "ListModels",
            request_serializer=pb.ListModelsRequest.SerializeToString,
            response_deserializer=pb.ListModelsResponse.FromString,
        )(pb.ListModelsRequest(), timeout=10, metadata=AUTH)
    return serving, [m.name for m in models.models]


def _still_served(daemon: Daemon) -> None:
    assert _probe(daemon) == (5, ["squeezenet1_0"])


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _silent(gate: threading.Event, first: list[Any] = ()) -> Iterator[Any]:  # type: ignore[assignment]
    """A request stream that sends ``first`` and then nothing, until the test lets it end."""
    yield from first
    gate.wait(30)


def _codes(calls: list[grpc.Future]) -> Counter[grpc.StatusCode]:
    return Counter(c.exception(30).code() if c.exception(30) else grpc.StatusCode.OK for c in calls)


def test_health_watches_are_capped_per_connection_and_never_take_the_probes(daemon: Daemon) -> None:
    per_connection = CAPS[CallKind.WATCH].per_connection
    # A subchannel pool of its own each: ten connections, not one shared.
    channels = [
        grpc.insecure_channel(_target(daemon), options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(10)
    ]
    try:
        watch = [
            ch.unary_stream(
                HEALTH + "Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for ch in channels
        ]
        # 40 watches on one connection (no token: health needs none), then 4 on each of nine others.
        calls = [watch[0](health_pb2.HealthCheckRequest(), timeout=30) for _ in range(40)]
        calls += [w(health_pb2.HealthCheckRequest(), timeout=30) for w in watch[1:] for _ in range(per_connection)]
        first: Counter[object] = Counter()
        for call in calls:
            try:
                first[next(call).status] += 1
            except grpc.RpcError as exc:
                first[exc.code()] += 1
        assert first == {
            health_pb2.HealthCheckResponse.SERVING: per_connection * 10,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 40 - per_connection,
        }
        assert daemon.admission.open(CallKind.WATCH) == per_connection * 10
        _still_served(daemon)  # 40 watches held: health and metadata still answered
        for call in calls:
            call.cancel()
        _wait(lambda: daemon.admission.open(CallKind.WATCH) == 0, "cancelled watches kept their places")
    finally:
        for ch in channels:
            ch.close()


@pytest.mark.parametrize("token", [True, False])
def test_silent_reflection_streams_hold_nothing(daemon: Daemon, token: bool) -> None:
    hold = threading.Event()
    per_connection = CAPS[CallKind.REFLECTION].per_connection
    with grpc.insecure_channel(_target(daemon)) as ch:
        open_ = ch.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        calls = [open_(_silent(hold), timeout=30, metadata=AUTH if token else ()) for _ in range(40)]
        try:
            refused = 40 - per_connection if token else 40
            _wait(lambda: sum(c.done() for c in calls) == refused, "the refused streams did not end at once")
            done = Counter(c.code() for c in calls if c.done())
            if token:
                assert done == {grpc.StatusCode.RESOURCE_EXHAUSTED: refused}
                assert daemon.admission.open(CallKind.REFLECTION) == per_connection
            else:  # refused before anything was read or admitted
                assert done == {grpc.StatusCode.UNAUTHENTICATED: 40}
                assert daemon.admission.open(CallKind.REFLECTION) == 0
            _still_served(daemon)
        finally:
            hold.set()
            for c in calls:
                c.cancel()
    _wait(lambda: daemon.admission.open(CallKind.REFLECTION) == 0, "reflection streams kept their places")


@pytest.mark.parametrize("token", [True, False])
def test_unary_calls_sent_as_headers_without_a_body_end_at_the_body_timeout(daemon: Daemon, token: bool) -> None:
    """30 ListModels and 30 Classify calls whose body never comes, on one connection.

    The body timeout is 1 s, so on a loaded host the last calls can arrive after the first ones
    ended: the test counts what was admitted at once (sampled) rather than assuming they all overlap.
    """
    hold = threading.Event()
    peak = {CallKind.UNARY: 0, CallKind.INFER: 0}

    def sample() -> None:
        while not hold.is_set():
            for kind in peak:
                peak[kind] = max(peak[kind], daemon.admission.open(kind))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with grpc.insecure_channel(_target(daemon)) as ch:
        headers_only = [
            ch.stream_unary(EDGE + method, request_serializer=ident) for method in ("ListModels", "Classify")
        ]
        metadata = AUTH if token else ()
        calls = [
            [call.future(_silent(hold), timeout=30, metadata=metadata) for _ in range(30)] for call in headers_only
        ]
        try:
            _still_served(daemon)  # while the calls wait for bodies
            listing, classify = (_codes(c) for c in calls)
        finally:
            hold.set()
            sampler.join(5)
    if token:  # each admitted call waited for its body until the timeout; Classify over its cap was refused at once
        assert listing == {grpc.StatusCode.DEADLINE_EXCEEDED: 30}
        assert set(classify) == {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert classify.total() == 30
        assert classify[grpc.StatusCode.DEADLINE_EXCEEDED] >= MAX_UNARY_INFER_CALLS
        assert 1 <= peak[CallKind.INFER] <= MAX_UNARY_INFER_CALLS
        assert peak[CallKind.UNARY] >= 1
    else:  # refused before a byte of body was read, and never admitted
        assert listing == classify == {grpc.StatusCode.UNAUTHENTICATED: 30}
        assert peak[CallKind.INFER] == 0  # (the probe's own ListModels, with a token, is admitted: UNARY may be 1)
    _wait(
        lambda: daemon.admission.open(CallKind.UNARY) == daemon.admission.open(CallKind.INFER) == 0,
        "ended calls kept their places",
    )


def _v2_request(image: bytes = GOOD) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="squeezenet")
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(image)
    return request


def test_silent_kserve_streams_are_timed_out_like_v1_streams(daemon: Daemon) -> None:
    hold = threading.Event()
    timed_out = dict(daemon.servicer.guard.timed_out)
    with grpc.insecure_channel(_target(daemon)) as ch:
        stream = ch.stream_stream(
            V2 + "ModelStreamInfer",
            request_serializer=v2.ModelInferRequest.SerializeToString,
            response_deserializer=v2.ModelStreamInferResponse.FromString,
        )
        # One answers a request, then goes quiet: ended after --idle-timeout.
        quiet = stream(_silent(hold, [_v2_request()]), timeout=30, metadata=AUTH)
        answered = next(quiet)
        silent = [stream(_silent(hold), timeout=30, metadata=AUTH) for _ in range(MAX_STREAMS - 1)]
        try:
            _wait(lambda: daemon.servicer.open_streams == MAX_STREAMS, "the silent streams were not admitted")
            with pytest.raises(grpc.RpcError) as full:  # every slot is held meanwhile: a v1 stream is refused
                list(ch.stream_stream(EDGE + "StreamClassify")(iter([b""]), timeout=30, metadata=AUTH))
            codes = _codes(silent)  # every one ended by the daemon, not by its 30 s deadline
            with pytest.raises(grpc.RpcError) as idle:
                next(quiet)
        finally:
            hold.set()
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED: MAX_STREAMS - 1}
    assert answered.error_message == "" and answered.infer_response.model_name == "squeezenet1_0"
    assert idle.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--idle-timeout" in idle.value.details()
    guard = daemon.servicer.guard
    assert guard.timed_out["config"] - timed_out["config"] == MAX_STREAMS - 1
    assert guard.timed_out["idle"] - timed_out["idle"] == 1
    _wait(lambda: daemon.servicer.open_streams == 0, "timed-out streams kept their places")


def test_a_unary_flood_is_refused_before_it_costs_memory(daemon: Daemon, gate: threading.Event) -> None:
    """40 Classify calls of ~400 KB while the model is stuck: 8 hold a frame each, the rest are refused."""
    frame = np.random.default_rng(0).integers(0, 255, (360, 370, 3), dtype=np.uint8)
    raw = pb.Image(raw=pb.RawImage(height=360, width=370, data=frame.tobytes()))
    request = pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), image=raw, top_k=1)
    gate.clear()
    with grpc.insecure_channel(_target(daemon)) as ch:
        classify = ch.unary_unary(
            EDGE + "Classify",
            request_serializer=pb.ClassifyRequest.SerializeToString,
            response_deserializer=pb.Prediction.FromString,
        )
        calls = [classify.future(request, timeout=60, metadata=AUTH) for _ in range(40)]
        _wait(lambda: sum(c.done() for c in calls) == 40 - MAX_UNARY_INFER_CALLS, "over the cap was not refused")
        assert daemon.budget.held <= MAX_UNARY_INFER_CALLS * frame.nbytes
        _still_served(daemon)
        gate.set()
        codes = _codes(calls)
    assert codes == {grpc.StatusCode.OK: MAX_UNARY_INFER_CALLS, grpc.StatusCode.RESOURCE_EXHAUSTED: 32}
    assert daemon.budget.held == 0


def _frames(images: list[pb.Image]) -> list[pb.StreamRequest]:
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_ALL)
    )
    return [config, *(pb.StreamRequest(frame=pb.Frame(sequence=i, image=im)) for i, im in enumerate(images))]


def test_a_fast_sender_is_held_to_its_byte_budget_and_every_frame_is_answered(
    daemon: Daemon, gate: threading.Event
) -> None:
    frame = np.random.default_rng(1).integers(0, 255, (360, 370, 3), dtype=np.uint8)
    image = pb.Image(raw=pb.RawImage(height=360, width=370, data=frame.tobytes()))
    gate.clear()
    with grpc.insecure_channel(_target(daemon)) as ch:
        stream = ch.stream_stream(
            EDGE + "StreamClassify",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.StreamResponse.FromString,
        )
        call = stream(iter(_frames([image] * 20)), timeout=60, metadata=AUTH)
        _wait(lambda: daemon.budget.held >= daemon.budget.per_stream, "the stream never filled its budget")
        time.sleep(0.3)  # the sender keeps sending: nothing more is read
        held = daemon.budget.held
        assert daemon.budget.per_stream <= held <= daemon.budget.per_stream + frame.nbytes
        gate.set()
        answers = list(call)
    assert [a.sequence for a in answers] == list(range(20))
    assert {a.WhichOneof("result") for a in answers} == {"prediction"}
    assert daemon.budget.held == 0


def test_a_good_frame_then_an_oversize_one_are_both_answered(daemon: Daemon) -> None:
    """Over --max-frame-bytes (up to twice it) is a frame's answer, after the frames before it; the stream goes on."""
    oversize = pb.Image(jpeg=b"\xff\xd8" + bytes(SMALL_FRAME_LIMIT + MESSAGE_OVERHEAD))
    with grpc.insecure_channel(_target(daemon)) as ch:
        stream = ch.stream_stream(
            EDGE + "StreamClassify",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.StreamResponse.FromString,
        )
        images = [pb.Image(jpeg=GOOD), oversize, pb.Image(jpeg=GOOD)]
        answers = list(stream(iter(_frames(images)), timeout=30, metadata=AUTH))
    assert [(a.sequence, a.WhichOneof("result")) for a in answers] == [
        (0, "prediction"),
        (1, "error"),
        (2, "prediction"),
    ]
    assert answers[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "--max-frame-bytes" in answers[1].error.message


def test_nothing_a_closed_stream_touched_stays_reachable(daemon: Daemon) -> None:
    """Sessions end with their call, and errors keep no traceback (which would hold each frame's bytes)."""
    bad = pb.Image(jpeg=b"\xff\xd8" + bytes(100_000))  # no frame header: an error answer per frame
    with grpc.insecure_channel(_target(daemon)) as ch:
        stream = ch.stream_stream(
            EDGE + "StreamClassify",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.StreamResponse.FromString,
        )
        answers = list(stream(iter(_frames([bad] * 10 + [pb.Image(jpeg=GOOD)])), timeout=30, metadata=AUTH))
    assert [a.WhichOneof("result") for a in answers] == ["error"] * 10 + ["prediction"]
    _wait(lambda: daemon.servicer.open_streams == 0, "the stream stayed open")
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, LoopSession)]
    held = [o for o in gc.get_objects() if isinstance(o, BaseException) and o.__traceback__ is not None]
    assert not [e for e in held if "could not be decoded" in str(e)]


def test_every_health_watcher_hears_a_change_when_another_watcher_of_its_service_has_left(runner: SlowRunner) -> None:
    """grpc's asyncio Watch forgot the other watchers of a service when one ended: they missed NOT_SERVING."""
    d = Daemon(["127.0.0.1:0"], max_streams=1)
    d.start()
    try:
        d.add_model(fake_model(SlowRunner()))
        d.mark_ready()
        with grpc.insecure_channel(_target(d)) as ch:
            watch = ch.unary_stream(
                HEALTH + "Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            stays, leaves = (watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2))
            assert next(stays).status == next(leaves).status == health_pb2.HealthCheckResponse.SERVING
            leaves.cancel()
            _wait(lambda: d.health.watchers("") == 1, "the cancelled watch was not counted out")
            d.stop(grace=0.5)  # the drain says NOT_SERVING to every watcher before it ends the calls
            assert next(stays).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        d.stop(grace=0)


def test_connections_over_the_cap_are_closed_as_they_are_accepted_and_places_come_back(runner: SlowRunner) -> None:
    """Idle TCP connections (the probe held 20,000) take at most --max-connections places; the next
    one is refused before any handshake, and a place comes back when a holder goes."""
    import socket

    cap = 3
    d = Daemon(["127.0.0.1:0"], max_connections=cap, tokens=Tokens([TOKEN])).start()
    d.add_model(fake_model(runner))
    d.mark_ready()
    holders: list[socket.socket] = []
    try:
        holders = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(cap)]
        time.sleep(0.3)  # the daemon has accepted them (they send nothing: no handshake)
        with pytest.raises(grpc.RpcError) as refused:
            _probe(d, checks=1)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        holders.pop().close()
        deadline = time.monotonic() + 20
        while True:  # the freed place is taken by a real client
            try:
                assert _probe(d, checks=2) == (2, ["squeezenet1_0"])
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "a closed connection's place did not come back"
                time.sleep(0.1)
    finally:
        for s in holders:
            s.close()
        d.stop(grace=0.5)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # and an empty SETTINGS


def _ended(sock: Any) -> bool:
    """Whether the daemon has closed ``sock``: what it sent (its SETTINGS) is read, then the end or a reset."""
    import socket

    try:
        while sock.recv(4096, socket.MSG_DONTWAIT):
            pass
        return True  # b"": the end
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_peer_over_its_connection_cap_loses_its_newest_connections_while_others_are_served(
    runner: SlowRunner,
) -> None:
    """Issue 26: 20,000 idle connections from one client. Past --max-connections-per-peer a peer's newest
    ones are closed (an HTTP/2 preface or none), while another peer's connections, a real EdgeClient stream
    from a third address, health checks and ListModels go on; the daemon counts what it closed."""
    import socket

    from prometheus_client import REGISTRY

    from edgeinfer.client import EdgeClient

    per_peer, attacker, bystander = 4, 12, 3
    counted = "edgeinfer_connections_over_peer_cap_total"
    before = REGISTRY.get_sample_value(counted) or 0.0
    d = Daemon(["127.0.0.1:0"], max_connections_per_peer=per_peer, tokens=Tokens([TOKEN])).start()
    d.add_model(fake_model(runner))
    d.mark_ready()
    socks: dict[str, list[socket.socket]] = {"127.0.0.2": [], "127.0.0.3": []}
    go_on = threading.Event()

    def frames() -> Iterator[bytes]:
        yield GOOD
        go_on.wait(30)
        yield GOOD

    try:
        with EdgeClient(_target(d), token=TOKEN) as client:
            answers = iter(client.stream(frames(), top_k=1, drop_policy="all"))
            assert next(answers).kind == "prediction"  # the stream is open from 127.0.0.1 before the flood
            for source, n in (("127.0.0.2", attacker), ("127.0.0.3", bystander)):
                for i in range(n):
                    s = socket.socket()
                    s.bind((source, 0))
                    s.connect(("127.0.0.1", d.port))
                    if i % 2:  # half speak HTTP/2 and then say nothing; half never speak
                        s.sendall(PREFACE)
                    socks[source].append(s)
            deadline = time.monotonic() + 20
            while sum(map(_ended, socks["127.0.0.2"])) < attacker - per_peer:
                assert time.monotonic() < deadline, "the peer's connections over its cap were not closed"
                time.sleep(0.05)
            _still_served(d)
            go_on.set()
            assert next(answers).kind == "prediction"  # the stream went on through it
            assert sum(map(_ended, socks["127.0.0.2"])) == attacker - per_peer  # the cap's worth stays open
            assert not any(map(_ended, socks["127.0.0.3"]))
        assert d.connection_cap is not None and d.connection_cap.closed == attacker - per_peer
        assert REGISTRY.get_sample_value(counted) - before == attacker - per_peer
    finally:
        go_on.set()
        for s in socks["127.0.0.2"] + socks["127.0.0.3"]:
            s.close()
        d.stop(grace=0.5)
