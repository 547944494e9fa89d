"""Hostile input (issue 16): each case over real gRPC, while a normal stream goes on predicting.

Every case must end in a clear status (per frame or per call), leave the daemon up,
and cost the normal stream nothing: its answers keep coming, in order, with labels.
The last tests fuzz the request messages (hypothesis) for a fixed budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeinfer.client import EdgeClient
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server import Daemon, WeightsSource, load_model
from edgeinfer.server.app import MESSAGE_OVERHEAD, OVERSIZE_READ
from edgeinfer.server.shm import SHM_ROOT
from helpers import SMALL_FRAME_LIMIT, jpeg, synthetic_frame

MAX_STREAMS = 4
CONFIG_TIMEOUT_S = 4.0  # long enough to hold every slot at once on a loaded machine
IDLE_TIMEOUT_S = 3.0
GOOD = jpeg(synthetic_frame(1, 120, 160))
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
SERVICE = "/edgeinfer.v1.EdgeInference/"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """Small limits and short timeouts, so that every hostile case is cheap to reach."""
    import torch

    torch.set_num_threads(2)
    d = Daemon(
        ["127.0.0.1:0"],
        max_streams=MAX_STREAMS,
        max_frame_bytes=SMALL_FRAME_LIMIT,
        config_timeout=CONFIG_TIMEOUT_S,
        idle_timeout=IDLE_TIMEOUT_S,
    ).start()
    d.add_model(
        load_model(
            "squeezenet", weights=WeightsSource("random", seed=0), max_frame_bytes=SMALL_FRAME_LIMIT, warmup=False
        )
    )
    d.mark_ready()
    yield d
    d.stop(grace=1)


@pytest.fixture(scope="module")
def target(daemon: Daemon) -> str:
    return f"127.0.0.1:{daemon.port}"


@pytest.fixture(scope="module")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EdgeInferenceStub:
    return pb_grpc.EdgeInferenceStub(channel)


class NormalStream:
    """A well-behaved camera beside the hostile client: one JPEG at a time, policy `all`."""

    def __init__(self, target: str) -> None:
        self.client = EdgeClient(target)
        self.results: list = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _frames(self) -> Iterator[bytes]:
        for sent in range(1, 3000):
            if self._stop.is_set():
                return
            yield GOOD
            # Lockstep: the next frame once this one is answered, so no backlog builds up on a busy machine.
            deadline = time.monotonic() + 60
            while len(self.results) < sent and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.005)
            time.sleep(0.15)  # a camera at a few frames per second: the battery stays cheap

    def _run(self) -> None:
        try:
            for r in self.client.stream(self._frames(), drop_policy="all", top_k=3, timeout=300):
                self.results.append(r)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> NormalStream:
        self._thread.start()
        self.wait_for(1)
        return self

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        want = len(self.results) + more
        deadline = time.monotonic() + timeout
        while len(self.results) < want:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"the normal stream stalled at {len(self.results)} answers"
            time.sleep(0.01)

    def keeps_answering(self) -> None:
        """Answers still come now, after the hostile client did its worst."""
        self.wait_for(2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()
        assert not self._thread.is_alive()
        assert self.error is None, self.error
        assert [r.sequence for r in self.results] == list(range(len(self.results)))  # nothing lost, in order
        assert {r.kind for r in self.results} == {"prediction"}
        labels = {r.prediction.top1.label for r in self.results}
        assert len(labels) == 1 and labels != {""}  # the same frame, the same labelled answer


@pytest.fixture(scope="module")
def normal(target: str) -> Iterator[NormalStream]:
    """One normal stream for the whole battery: it must come through every hostile case unharmed."""
    with NormalStream(target) as stream:
        yield stream


def _config(policy: int = pb.DROP_POLICY_ALL, **kwargs: object) -> pb.StreamRequest:
    return pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=3, drop_policy=policy, **kwargs)
    )


def _frame(seq: int, image: pb.Image) -> pb.StreamRequest:
    return pb.StreamRequest(frame=pb.Frame(sequence=seq, capture_time_ns=seq, image=image))


def _declaring(height: int, width: int) -> bytes:
    """A small real JPEG whose frame header claims another size."""
    data = bytearray(GOOD)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_line(details: str | None) -> bool:
    return bool(details) and "\n" not in details  # type: ignore[operator]


# -- declared sizes ---------------------------------------------------------------------


def test_images_that_declare_too_many_pixels_are_refused_before_decoding(
    normal: NormalStream, stub: pb_grpc.EdgeInferenceStub
) -> None:
    huge = _declaring(65000, 65000)
    assert len(huge) < 8 << 10  # a few KB that would decode to 12 GB
    images = [
        pb.Image(jpeg=GOOD),
        pb.Image(jpeg=huge),
        pb.Image(jpeg=_declaring(4000, 4000)),  # each side fine, 16 MP over --max-pixels
        pb.Image(raw=pb.RawImage(height=1, width=8000, data=bytes(24000))),  # 24 KB, resized would be 256x2048000
        pb.Image(raw=pb.RawImage(height=100_000, width=1, data=b"\0" * 300)),
        pb.Image(raw=pb.RawImage(height=2, width=2, pixel_format=9, data=bytes(12))),  # undefined enum value
        pb.Image(jpeg=GOOD),
    ]
    peak_before = _peak_rss_mb()
    answers = list(stub.StreamClassify(iter([_config(), *(_frame(i, im) for i, im in enumerate(images))]), timeout=60))
    with pytest.raises(grpc.RpcError) as unary:
        stub.Classify(pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=images[1]))
    normal.keeps_answering()
    assert [a.sequence for a in answers] == list(range(len(images)))
    assert [a.WhichOneof("result") for a in answers] == ["prediction", *["error"] * 5, "prediction"]
    assert {a.error.code for a in answers[1:6]} == {INVALID.value[0]}
    messages = [a.error.message for a in answers[1:6]]
    assert "65000x65000" in messages[0] and "--max-side" in messages[0]
    assert "--max-pixels" in messages[1]
    assert "too elongated" in messages[2] and "--max-pixels" in messages[2]
    assert "--max-side" in messages[3]
    assert "pixel_format 9 is not a PixelFormat" in messages[4]
    assert unary.value.code() == INVALID and "--max-side" in unary.value.details()
    assert _peak_rss_mb() - peak_before < 500  # nothing near the 12 GB the header asks for was allocated


@pytest.mark.parametrize("policy", [pb.DROP_POLICY_LATEST, pb.DROP_POLICY_ALL])
def test_max_frame_bytes_holds_before_queueing_for_every_policy(
    normal: NormalStream, stub: pb_grpc.EdgeInferenceStub, policy: int
) -> None:
    big = pb.Image(jpeg=b"\xff\xd8" + bytes(SMALL_FRAME_LIMIT + 1))
    images = [pb.Image(jpeg=GOOD) if i % 2 == 0 else big for i in range(12)]
    answers = list(stub.StreamClassify(iter([_config(policy), *(_frame(i, im) for i, im in enumerate(images))])))
    # A message far over the limit ends its own stream at gRPC's limit, twice --max-frame-bytes.
    too_big = pb.Image(jpeg=b"\xff\xd8" + bytes(OVERSIZE_READ * SMALL_FRAME_LIMIT + MESSAGE_OVERHEAD))
    with pytest.raises(grpc.RpcError) as ended:
        list(stub.StreamClassify(iter([_config(policy), _frame(0, too_big)]), timeout=30))
    normal.keeps_answering()
    assert [a.sequence for a in answers] == list(range(12))
    oversize = [a for a in answers if a.sequence % 2]
    # Never "dropped" as a stale frame: refused before it could take a place in line.
    assert {a.WhichOneof("result") for a in oversize} == {"error"}
    assert {a.error.code for a in oversize} == {EXHAUSTED.value[0]}
    assert all("--max-frame-bytes" in a.error.message for a in oversize)
    assert {a.WhichOneof("result") for a in answers if a.sequence % 2 == 0} <= {"prediction", "dropped"}
    assert answers[-2].WhichOneof("result") == "prediction"  # the last good frame is never dropped
    assert ended.value.code() == EXHAUSTED


# -- streams that hold threads -------------------------------------------------------------


def _stalled(gate: threading.Event, first: list[pb.StreamRequest] | None = None) -> Iterator[pb.StreamRequest]:
    yield from first or ()
    gate.wait(30)


def _wait_open(daemon: Daemon, n: int) -> None:
    deadline = time.monotonic() + 10
    while daemon.servicer.open_streams != n:
        assert time.monotonic() < deadline, f"{daemon.servicer.open_streams} streams open, expected {n}"
        time.sleep(0.01)


def test_config_less_streams_cannot_starve_health_or_unary_calls_and_time_out(
    daemon: Daemon, normal: NormalStream, channel: grpc.Channel, stub: pb_grpc.EdgeInferenceStub
) -> None:
    gate = threading.Event()
    timed_out = daemon.servicer.guard.timed_out["config"]
    try:
        half_open = [stub.StreamClassify(_stalled(gate), timeout=30) for _ in range(MAX_STREAMS - 1)]
        _wait_open(daemon, MAX_STREAMS)  # every slot held, three of them by streams that sent nothing
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.StreamClassify(_stalled(gate), timeout=10))
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        models = stub.ListModels(pb.ListModelsRequest(), timeout=5)
        answer = stub.Classify(
            pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=pb.Image(jpeg=GOOD)),
            timeout=10,
        )
        normal.keeps_answering()
        ends = []
        for call in half_open:
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            ends.append((info.value.code(), info.value.details()))
        normal.keeps_answering()
        _wait_open(daemon, 1)
    finally:
        gate.set()
    assert refused.value.code() == EXHAUSTED and f"--max-streams {MAX_STREAMS}" in refused.value.details()
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert [m.name for m in models.models] == ["squeezenet1_0"]
    assert answer.classes[0].label
    assert {code for code, _ in ends} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert all("--config-timeout" in details for _, details in ends)
    assert daemon.servicer.guard.timed_out["config"] - timed_out == MAX_STREAMS - 1
    _wait_open(daemon, 1)  # the normal stream


def test_unary_calls_waiting_on_a_stuck_model_cannot_take_the_health_checks_threads() -> None:
    """Classify and KServe v2 ModelInfer share one cap: the calls over it are refused at once, health answers."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeinfer.proto import kserve_v2_pb2 as v2
    from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc
    from edgeinfer.server.servicer import MAX_UNARY_INFER_CALLS
    from fakes import SlowRunner, fake_model

    runner = SlowRunner()
    runner.gate.clear()  # the model takes each frame and sits on it
    d = Daemon(["127.0.0.1:0"], max_streams=1).start()
    d.add_model(fake_model(runner))
    d.mark_ready()
    request = pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=pb.Image(jpeg=GOOD))
    infer = v2.ModelInferRequest(model_name="squeezenet")
    infer.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(GOOD)
    calls = MAX_UNARY_INFER_CALLS + 4
    try:
        with grpc.insecure_channel(f"127.0.0.1:{d.port}") as ch, ThreadPoolExecutor(calls) as pool:
            stub, kserve = pb_grpc.EdgeInferenceStub(ch), v2_grpc.GRPCInferenceServiceStub(ch)

            def call(i: int) -> tuple[str, str]:
                try:
                    if i % 2:
                        return "ModelInfer", kserve.ModelInfer(infer, timeout=30).outputs[0].name
                    return "Classify", stub.Classify(request, timeout=30).classes[0].label
                except grpc.RpcError as exc:
                    return ("ModelInfer" if i % 2 else "Classify"), exc.code().name

            futures = [pool.submit(call, i) for i in range(calls)]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < calls - MAX_UNARY_INFER_CALLS:  # refused at once
                assert time.monotonic() < deadline, "the calls over the limit were not refused"
                time.sleep(0.01)
            refused = [f.result()[1] for f in futures if f.done()]
            # Every allowed call sits in the model, and yet:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            models = stub.ListModels(pb.ListModelsRequest(), timeout=5)
            metadata = kserve.ModelMetadata(v2.ModelMetadataRequest(name="squeezenet"), timeout=5)
            runner.gate.set()
            answers = [f.result(timeout=30) for f in futures]
    finally:
        runner.gate.set()
        d.stop(grace=1)
    assert refused == ["RESOURCE_EXHAUSTED"] * (calls - MAX_UNARY_INFER_CALLS)
    assert health.status == health_pb2.HealthCheckResponse.SERVING and len(models.models) == 1
    assert metadata.name == "squeezenet1_0"
    answered = [(method, a) for method, a in answers if a != "RESOURCE_EXHAUSTED"]
    assert len(answered) == MAX_UNARY_INFER_CALLS and all(a for _, a in answered)  # each with its label or output
    # 6 calls of each method and 8 slots: both methods held slots of the one cap at once
    assert {method for method, _ in answered} == {"Classify", "ModelInfer"}


def test_an_idle_stream_is_ended_and_counted(
    daemon: Daemon, normal: NormalStream, stub: pb_grpc.EdgeInferenceStub
) -> None:
    from edgeinfer.server import metrics

    gate = threading.Event()
    before = daemon.servicer.guard.timed_out["idle"]
    counted = metrics.STREAMS_TIMED_OUT.labels("idle")._value.get()
    try:
        call = stub.StreamClassify(_stalled(gate, [_config(), _frame(0, pb.Image(jpeg=GOOD))]), timeout=30)
        first = next(call)
        with pytest.raises(grpc.RpcError) as info:
            next(call)  # nothing more is sent: ended after --idle-timeout
        normal.keeps_answering()
    finally:
        gate.set()
    assert first.WhichOneof("result") == "prediction"
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--idle-timeout" in info.value.details()
    assert daemon.servicer.guard.timed_out["idle"] - before == 1
    assert metrics.STREAMS_TIMED_OUT.labels("idle")._value.get() - counted == 1
    _wait_open(daemon, 1)  # the normal stream


def test_a_client_that_stops_reading_its_answers_loses_its_stream_not_a_thread(
    daemon: Daemon, normal: NormalStream, target: str
) -> None:
    """Answers of 1000 classes (~25 KB each) fill a 64 KB flow-control window after a few frames: the
    handler then sits in a send that only the client can complete, until the guard cancels the call."""
    idle = daemon.servicer.guard.timed_out["idle"]
    gate = threading.Event()
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1000, drop_policy=pb.DROP_POLICY_ALL)
    )
    frames = [_frame(i, pb.Image(jpeg=GOOD)) for i in range(12)]
    # No BDP probing: the window stays at its initial 64 KB, as a slow client's would.
    with grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        call = pb_grpc.EdgeInferenceStub(ch).StreamClassify(_stalled(gate, [config, *frames]), timeout=60)
        try:
            _wait_open(daemon, 2)
            deadline = time.monotonic() + IDLE_TIMEOUT_S + 15
            while daemon.servicer.open_streams > 1:  # released with nothing read by the client
                assert time.monotonic() < deadline, "a stream whose client stopped reading held its handler"
                time.sleep(0.05)
            normal.keeps_answering()
        finally:
            gate.set()
        with pytest.raises(grpc.RpcError) as ended:
            list(call)
    # CANCELLED, not the idle error: the handler was in that send, and only a cancel could free it.
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    assert daemon.servicer.guard.timed_out["idle"] - idle == 1


def test_a_stream_stuck_in_a_send_is_cancelled_after_its_idle_error() -> None:
    """A client that stops reading leaves its handler in a send only the client can finish."""
    from edgeinfer.server.stream_guard import StreamGuard

    class Context:
        aborted: list = []

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.aborted.append(code)

    class Session:
        failed: list = []
        aborted = False

        def fail(self, exc: BaseException) -> None:
            self.failed.append(exc)

        def abort(self) -> None:
            self.aborted = True

    async def stuck_handler() -> tuple[StreamGuard, Session, bool]:
        guard = StreamGuard(max_streams=1, idle_timeout=0.2)
        session = Session()
        stream = guard.admit(context)  # type: ignore[arg-type]
        stream.session = session  # type: ignore[assignment]
        try:
            await asyncio.sleep(10)  # a send the client never takes
        except asyncio.CancelledError:
            return guard, session, True  # its error could not be sent: cancelled, the loop is free
        finally:
            guard.stop()
        return guard, session, False

    context = Context()
    guard, session, cancelled = asyncio.run(stuck_handler())
    assert cancelled and context.aborted == [grpc.StatusCode.CANCELLED]
    assert len(session.failed) == 1 and "--idle-timeout" in session.failed[0].details
    assert session.aborted and guard.timed_out["idle"] == 1


# -- shared memory --------------------------------------------------------------------------


@pytest.fixture
def shm_path() -> Iterator[Path]:
    path = SHM_ROOT / f"edgeinfer-hostile-{os.getpid()}-{threading.get_ident()}"
    yield path
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
    with contextlib.suppress(FileNotFoundError):
        Path(f"{path}-real").unlink()


def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod, chown)")


def _make(kind: str, path: Path) -> None:
    if kind == "symlink to a regular object":
        Path(f"{path}-real").write_bytes(bytes(8192))
        path.symlink_to(f"{path}-real")
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "FIFO":
        os.mkfifo(path)  # opening it for reading would block until a writer comes
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        _root_only()
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    elif kind == "another user's object":
        _root_only()
        path.write_bytes(bytes(8192))
        os.chown(path, 4242, 4242)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("symlink to a regular object", "symbolic link"),
        ("symlink to /dev/zero", "symbolic link"),
        ("FIFO", "is a FIFO"),
        ("directory", "is a directory"),
        ("device", "is a device"),
        ("another user's object", "belongs to user 4242"),
    ],
)
def test_a_key_that_names_no_plain_shared_memory_object_is_refused_without_blocking(
    normal: NormalStream, stub: pb_grpc.EdgeInferenceStub, shm_path: Path, kind: str, text: str
) -> None:
    _make(kind, shm_path)
    region = pb.SharedMemoryRegion(key="/" + shm_path.name, byte_size=4096)
    with pytest.raises(grpc.RpcError) as info:  # a blocked open would end in DEADLINE_EXCEEDED instead
        list(stub.StreamClassify(iter([_config(shared_memory=region)]), timeout=10))
    normal.keeps_answering()
    assert info.value.code() == INVALID, info.value.details()
    assert text in info.value.details() and _one_line(info.value.details())


def test_a_region_shrunk_replaced_and_restored_under_live_frames_never_crashes(
    normal: NormalStream, stub: pb_grpc.EdgeInferenceStub, shm_path: Path
) -> None:
    h, w = 96, 128
    size = h * w * 3 * 4
    pixels = synthetic_frame(2, h, w)
    shm_path.write_bytes(pixels.tobytes() * 4)
    stop = threading.Event()

    def meddle() -> None:  # what a buggy or hostile client on the host may do, as fast as it can
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(OSError):
                if i % 3 == 0:
                    os.truncate(shm_path, 0)
                elif i % 3 == 1:
                    os.truncate(shm_path, size)
                else:  # replaced by another object under the same name
                    shm_path.unlink()
                    shm_path.write_bytes(bytes(size))
            time.sleep(0.001)

    frames = [
        _frame(i, pb.Image(shared_memory=pb.SharedMemoryImage(offset=(i % 4) * h * w * 3, height=h, width=w)))
        for i in range(24)
    ]
    region = pb.SharedMemoryRegion(key="/" + shm_path.name, byte_size=size)
    meddler = threading.Thread(target=meddle, daemon=True)
    answers = []
    try:
        for answer in stub.StreamClassify(iter([_config(shared_memory=region), *frames]), timeout=60):
            answers.append(answer)
            if len(answers) == 1:  # the stream is open (its config checked the object's size): now meddle
                meddler.start()
    finally:
        stop.set()
        if meddler.is_alive():
            meddler.join()
    normal.keeps_answering()
    assert [a.sequence for a in answers] == list(range(24))
    kinds = {a.WhichOneof("result") for a in answers}
    assert kinds <= {"prediction", "error"} and "prediction" in kinds
    errors = [a.error for a in answers if a.HasField("error")]
    assert all(e.code == INVALID.value[0] and "shrank to" in e.message for e in errors)


def test_a_shared_memory_frame_that_declares_too_many_pixels_is_refused_before_reading(
    target: str, stub: pb_grpc.EdgeInferenceStub, shm_path: Path
) -> None:
    shm_path.write_bytes(bytes(1 << 20))
    region = pb.SharedMemoryRegion(key="/" + shm_path.name, byte_size=1 << 20)
    frames = [
        _frame(0, pb.Image(shared_memory=pb.SharedMemoryImage(offset=0, height=5000, width=5000))),
        _frame(1, pb.Image(shared_memory=pb.SharedMemoryImage(offset=0, height=100, width=100))),
    ]
    answers = list(stub.StreamClassify(iter([_config(shared_memory=region), *frames]), timeout=30))
    assert answers[0].error.code == INVALID.value[0] and "--max-pixels" in answers[0].error.message
    assert answers[1].WhichOneof("result") == "prediction"


# -- bytes that are no request -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (SERVICE + "Classify", "edgeinfer.v1.ClassifyRequest"),
        (SERVICE + "GetModel", "edgeinfer.v1.GetModelRequest"),
        (SERVICE + "ListModels", "edgeinfer.v1.ListModelsRequest"),
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
    ],
)
def test_bytes_that_are_not_the_request_are_invalid_argument(
    normal: NormalStream, channel: grpc.Channel, method: str, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(method)(b"\xff\xff\xff\xff garbage", timeout=5)
    normal.keeps_answering()
    assert info.value.code() == INVALID
    assert f"not a valid {expected}" in info.value.details() and _one_line(info.value.details())


def test_a_garbage_message_in_a_stream_ends_it_after_the_answers_before_it(
    normal: NormalStream, channel: grpc.Channel
) -> None:
    call = channel.stream_stream(SERVICE + "StreamClassify")
    good = [_config().SerializeToString(), _frame(0, pb.Image(jpeg=GOOD)).SerializeToString()]
    with pytest.raises(grpc.RpcError) as first:
        list(call(iter([b"\x0a\xff\xff"]), timeout=10))
    answers: list[bytes] = []
    with pytest.raises(grpc.RpcError) as later:
        for raw in call(iter([*good, b"\xff\xfe\xfd"]), timeout=10):
            answers.append(raw)
    with pytest.raises(grpc.RpcError) as undefined:
        list(call(iter([_config(policy=7).SerializeToString()]), timeout=10))
    normal.keeps_answering()
    assert first.value.code() == INVALID and "not a valid edgeinfer.v1.StreamRequest" in first.value.details()
    assert [pb.StreamResponse.FromString(a).WhichOneof("result") for a in answers] == ["prediction"]
    assert later.value.code() == INVALID and "not a valid edgeinfer.v1.StreamRequest" in later.value.details()
    assert undefined.value.code() == INVALID and "drop_policy 7 is not a DropPolicy" in undefined.value.details()


def test_a_status_quoting_a_huge_client_string_is_clipped_and_the_connection_survives(
    normal: NormalStream, stub: pb_grpc.EdgeInferenceStub
) -> None:
    from edgeinfer.server.malformed import MAX_DETAILS

    huge = "x" * 100_000  # quoted whole, a status over gRPC's 16 KB metadata limit: GOAWAY for the connection
    gate = threading.Event()
    live = stub.StreamClassify(_stalled(gate, [_config(), _frame(0, pb.Image(jpeg=GOOD))]), timeout=30)
    first = next(live)  # a stream on the same connection as the calls below
    ends = []
    for request in (
        pb.GetModelRequest(model=pb.ModelSelector(name=huge)),
        pb.GetModelRequest(model=pb.ModelSelector(name="squeezenet", precision=huge)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModel(request, timeout=10)
        ends.append(info.value)
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.StreamClassify(iter([_config(shared_memory=pb.SharedMemoryRegion(key=huge, byte_size=1))]), timeout=10)
        )
    ends.append(info.value)
    gate.set()
    rest = list(live)  # the stream went on and ended as its client ended it
    normal.keeps_answering()
    assert [e.code() for e in ends] == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, INVALID]
    assert all(len(e.details()) <= MAX_DETAILS and _one_line(e.details()) for e in ends)
    assert "characters in all" in ends[0].details()
    assert first.WhichOneof("result") == "prediction" and rest == []


# -- drain ----------------------------------------------------------------------------------


def test_sigterm_answers_every_frame_read_then_the_process_exits(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer.server.cli", "--model", "squeezenet", "--weights", "random",
         "--host", "127.0.0.1", "--port", "0", "--threads", "1", "--max-batch", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "SERVING" in line:
                break
        listening = next(line for line in lines if "listening on" in line)
        port = int(listening.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        gate = threading.Event()
        frames = [_config(), *(_frame(i, pb.Image(jpeg=GOOD)) for i in range(6))]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = pb_grpc.EdgeInferenceStub(ch).StreamClassify(_stalled(gate, frames), timeout=60)
            answers = [next(call)]
            time.sleep(1.0)  # the reader has read all six by now (its window is 8)
            server.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as ended:
                answers.extend(call)
            gate.set()
        rc = server.wait(timeout=30)
        rest = server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert [a.sequence for a in answers] == list(range(6))  # every frame read before the signal was answered
    assert {a.WhichOneof("result") for a in answers} == {"prediction"}
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.value.details()
    assert rc == 0 and "draining" in rest


# -- fuzz -----------------------------------------------------------------------------------

_u32 = st.one_of(st.integers(0, 64), st.sampled_from([224, 1 << 16, 65535, 100_000, 2**32 - 1]))
_enum = st.integers(-3, 8)  # defined values and undefined ones
_jpeg = st.one_of(
    st.binary(max_size=64),
    st.just(GOOD),
    st.integers(0, len(GOOD)).map(lambda n: GOOD[:n]),
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda hw: _declaring(*hw)),
)


@st.composite
def _raw(draw: st.DrawFn) -> pb.Image:
    h, w = draw(_u32), draw(_u32)
    exact = h * w * 3 <= 64 * 64 * 3 and draw(st.booleans())
    data = bytes(h * w * 3) if exact else draw(st.binary(max_size=64))
    return pb.Image(raw=pb.RawImage(height=h, width=w, pixel_format=draw(_enum), data=data))


_image = st.one_of(
    _jpeg.map(lambda b: pb.Image(jpeg=b)),
    _raw(),
    st.builds(
        lambda o, h, w, f: pb.Image(shared_memory=pb.SharedMemoryImage(offset=o, height=h, width=w, pixel_format=f)),
        st.integers(0, 2**64 - 1),
        _u32,
        _u32,
        _enum,
    ),
    st.just(pb.Image()),
)
_selector = st.builds(
    pb.ModelSelector,
    name=st.one_of(st.sampled_from(["squeezenet", "squeezenet1_0", "resnet50", "", "vgg16"]), st.text(max_size=12)),
    precision=st.one_of(st.sampled_from(["", "fp32", "fp16", "int8"]), st.text(max_size=6)),
)
_top_k = st.one_of(st.integers(0, 6), st.sampled_from([999, 1000, 1001, 2**32 - 1]))
_config_msg = st.builds(
    lambda model, k, policy, shm: pb.StreamRequest(
        config=pb.StreamConfig(model=model, top_k=k, drop_policy=policy, shared_memory=shm)
    ),
    _selector,
    _top_k,
    _enum,
    st.one_of(
        st.none(),
        st.builds(pb.SharedMemoryRegion, key=st.text(max_size=20), byte_size=st.integers(0, 2**64 - 1)),
    ),
)
_frame_msg = st.builds(
    lambda seq, t, image: pb.StreamRequest(frame=pb.Frame(sequence=seq, capture_time_ns=t, image=image)),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), 2**63 - 1),
    _image,
)
_stream_bytes = st.lists(
    st.one_of(_config_msg, _frame_msg).map(lambda m: m.SerializeToString()) | st.binary(max_size=40), max_size=5
)
_classify_bytes = st.one_of(
    st.builds(pb.ClassifyRequest, model=_selector, top_k=_top_k, image=_image).map(lambda m: m.SerializeToString()),
    st.binary(max_size=80),
)
_FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_FUZZ
@given(request=_classify_bytes)
def test_fuzz_classify_answers_every_request_with_a_clear_status(channel: grpc.Channel, request: bytes) -> None:
    try:
        answer = pb.Prediction.FromString(channel.unary_unary(SERVICE + "Classify")(request, timeout=10))
    except grpc.RpcError as exc:
        assert exc.code() not in NEVER, (exc.code(), exc.details())
        assert _one_line(exc.details()), exc.details()
    else:
        assert answer.classes and answer.classes[0].label


@settings(_FUZZ, max_examples=200)
@given(messages=_stream_bytes)
def test_fuzz_streams_answer_every_frame_or_end_with_a_clear_status(
    channel: grpc.Channel, messages: list[bytes]
) -> None:
    answers: list[pb.StreamResponse] = []
    try:
        for raw in channel.stream_stream(SERVICE + "StreamClassify")(iter(messages), timeout=20):
            answers.append(pb.StreamResponse.FromString(raw))
        status = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        status = exc.code()
        assert status not in NEVER, (status, exc.details())
        assert _one_line(exc.details()), exc.details()
    assert all(a.error.code not in (2, 13) for a in answers if a.HasField("error")), answers
    assert len(answers) <= max(0, len(messages) - 1)
    if status == grpc.StatusCode.OK and messages:
        assert len(answers) == len(messages) - 1  # every frame answered


def test_the_daemon_is_whole_after_the_fuzz(daemon: Daemon, normal: NormalStream, target: str) -> None:
    with EdgeClient(target) as c:
        results = list(c.stream([GOOD, GOOD], drop_policy="all", top_k=1))
    assert [r.kind for r in results] == ["prediction", "prediction"]
    _wait_open(daemon, 1)  # the normal stream
    assert np.isfinite(results[0].prediction.top1.probability)
    normal.keeps_answering()


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--max-pixels", "0"], "--max-pixels: must be at least 1"),
        (["--max-side", "x"], "--max-side: expected a whole number"),
        (["--config-timeout", "0"], "--config-timeout: must be more than 0"),
        (["--idle-timeout", "-1"], "--idle-timeout: must be 0 (off) or more"),
        (["--idle-timeout", "nan"], "--idle-timeout: must be 0 (off) or more"),
    ],
)
def test_the_limit_and_timeout_flags_refuse_bad_values_in_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], text: str
) -> None:
    from edgeinfer.server.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--model", "squeezenet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and text in err[-1]
    defaults = build_parser().parse_args(["--model", "squeezenet"])
    assert (defaults.max_pixels, defaults.max_side) == (4096 * 3072, 8192)
    assert (defaults.config_timeout, defaults.idle_timeout) == (10.0, 120.0)
