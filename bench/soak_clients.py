"""The soak's clients: normal streams, and the hostile ones (huge declared sizes, config-less and
abandoned streams, shared-memory tricks, garbage bytes), each tallying the status it got back."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeinfer.client import EdgeClient
from edgeinfer.media.sample import synthetic_frame
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

SERVICE = "/edgeinfer.v1.EdgeInference/"
CONFIG_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 10.0  # short, so abandoned streams come and go; long enough for a starved client
BAD = ("INTERNAL", "UNKNOWN")


# -- the clients -----------------------------------------------------------------------------


class Tally:
    """What every client saw, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.kinds: Counter[str] = Counter()
        self.cases: dict[str, Counter[str]] = {}

    def frames(self, sent: int, answers: list[str]) -> None:
        with self._lock:
            self.sent += sent
            self.answered += len(answers)
            self.kinds.update(answers)

    def status(self, case: str, code: str) -> None:
        with self._lock:
            self.cases.setdefault(case, Counter())[code] += 1


def _code(exc: grpc.RpcError | None) -> str:
    return "OK" if exc is None else exc.code().name  # type: ignore[union-attr]


def _declaring(data: bytes, height: int, width: int) -> bytes:
    b = bytearray(data)
    sof = b.index(b"\xff\xc0")
    b[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(b)


FRAME = synthetic_frame(3, 160, 120)
JPEG = cv2.imencode(".jpg", FRAME)[1].tobytes()


def normal_stream(i: int, target: str, end: float, fps: float, tally: Tally) -> None:
    """One camera: stream i's encoding and policy cycle, so every kind runs."""
    encoding = ("jpeg", "raw", "shm")[i % 3]
    policy = "latest" if i % 2 == 0 else "all"
    answers: list[str] = []
    sent = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal sent
        while time.monotonic() < end:
            started = time.monotonic()
            yield FRAME
            sent += 1
            if policy == "all":  # lockstep: no backlog beyond one frame on a saturated machine
                while len(answers) < sent and time.monotonic() < end + 60:
                    time.sleep(0.002)
            time.sleep(max(0.0, 1 / fps - (time.monotonic() - started)))

    with EdgeClient(target) as client:
        try:
            for r in client.stream(frames(), drop_policy=policy, encoding=encoding, top_k=3, timeout=None):
                answers.append(r.kind)
            tally.status("normal", "OK")
        except Exception as exc:
            tally.status("normal", getattr(getattr(exc, "code", None), "name", type(exc).__name__))
    tally.frames(sent, answers)


def _loop(end: float, pause: float, body: Callable[[], None]) -> None:
    while time.monotonic() < end:
        body()
        time.sleep(pause)


def huge_declared(target: str, end: float, tally: Tally) -> None:
    huge = pb.Image(jpeg=_declaring(JPEG, 65000, 65000))
    elongated = pb.Image(raw=pb.RawImage(height=1, width=8000, data=bytes(24000)))
    good = pb.Image(jpeg=JPEG)
    images = [huge, good, elongated, huge, good]
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_ALL)
    )
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)

        def once() -> None:
            frames = [pb.StreamRequest(frame=pb.Frame(sequence=n, image=im)) for n, im in enumerate(images)]
            answers: list[str] = []
            try:
                for a in stub.StreamClassify(iter([config, *frames]), timeout=60):
                    answers.append(a.WhichOneof("result"))
                    if a.HasField("error"):
                        tally.status("huge-declared", grpc.StatusCode(_by_number(a.error.code)).name)
                tally.status("huge-declared", "OK")
            except grpc.RpcError as exc:
                tally.status("huge-declared", _code(exc))
            tally.frames(len(frames), answers)
            try:
                stub.Classify(
                    pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=huge), timeout=10
                )
                tally.status("huge-declared-unary", "OK")
            except grpc.RpcError as exc:
                tally.status("huge-declared-unary", _code(exc))

        _loop(end, 0.5, once)


def _by_number(n: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == n)


def config_less(target: str, end: float, tally: Tally, at_once: int = 3) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)

        def once() -> None:
            gate = threading.Event()

            def nothing() -> Iterator[pb.StreamRequest]:
                gate.wait(30)
                return
                yield  # a generator that sends nothing

            calls = [stub.StreamClassify(nothing(), timeout=30) for _ in range(at_once)]
            for call in calls:
                try:
                    list(call)
                    tally.status("config-less", "OK")
                except grpc.RpcError as exc:
                    tally.status("config-less", _code(exc))
            gate.set()

        _loop(end, 0.5, once)


def abandoned(target: str, end: float, tally: Tally) -> None:
    big = pb.Image(raw=pb.RawImage(height=1000, width=1000, data=bytes(3_000_000)))  # 3 MB frames
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_LATEST)
    )
    turn = 0

    def once() -> None:
        nonlocal turn
        turn += 1
        gate = threading.Event()

        def frames(n: int) -> Iterator[pb.StreamRequest]:
            yield config
            for k in range(n):
                yield pb.StreamRequest(frame=pb.Frame(sequence=k, image=big))
            gate.wait(IDLE_TIMEOUT_S * 3)

        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.EdgeInferenceStub(ch)
            call = stub.StreamClassify(frames(6), timeout=IDLE_TIMEOUT_S * 4)
            if turn % 2:  # walks away: one answer read, then the call is cancelled
                with contextlib.suppress(grpc.RpcError, StopIteration):
                    next(call)
                call.cancel()
                tally.status("abandoned-cancelled", "CANCELLED")
            else:  # goes silent: sends, then neither sends nor reads; the daemon ends it
                time.sleep(IDLE_TIMEOUT_S + 2)
                try:
                    for _ in call:
                        pass
                    tally.status("abandoned-silent", "OK")
                except grpc.RpcError as exc:
                    tally.status("abandoned-silent", _code(exc))
            gate.set()

    _loop(end, 0.2, once)


def shm_tricks(target: str, end: float, tally: Tally) -> None:
    h, w = 120, 160
    slot = h * w * 3
    root = Path("/dev/shm")
    name = f"edgeinfer-soak-{os.getpid()}"
    turn = 0

    def once() -> None:
        nonlocal turn
        turn += 1
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.EdgeInferenceStub(ch)
            if turn % 2:  # a real region, shrunk and replaced under live frames
                path = root / f"{name}-{turn}"
                path.write_bytes(FRAME.tobytes() * 4)  # a POSIX shared-memory object is a file in /dev/shm
                stop = threading.Event()

                def meddle() -> None:
                    k = 0
                    while not stop.is_set():
                        k += 1
                        with contextlib.suppress(OSError):
                            if k % 3 == 0:
                                os.truncate(path, 0)
                            elif k % 3 == 1:
                                os.truncate(path, slot * 4)
                            else:
                                path.unlink()
                                path.write_bytes(bytes(slot * 4))
                        time.sleep(0.005)

                config = pb.StreamRequest(
                    config=pb.StreamConfig(
                        model=pb.ModelSelector(name="squeezenet"),
                        top_k=1,
                        drop_policy=pb.DROP_POLICY_ALL,
                        shared_memory=pb.SharedMemoryRegion(key="/" + path.name, byte_size=slot * 4),
                    )
                )
                frames = [
                    pb.StreamRequest(
                        frame=pb.Frame(
                            sequence=k,
                            image=pb.Image(
                                shared_memory=pb.SharedMemoryImage(offset=(k % 4) * slot, height=h, width=w)
                            ),
                        )
                    )
                    for k in range(8)
                ]
                # The meddling starts once the stream is open (its config checks the object's size).
                meddler = threading.Thread(target=meddle, daemon=True)
                answers: list[str] = []
                try:
                    for a in stub.StreamClassify(iter([config, *frames]), timeout=60):
                        answers.append(a.WhichOneof("result"))
                        if len(answers) == 1:
                            meddler.start()
                    tally.status("shm-shrunk", "OK")
                except grpc.RpcError as exc:
                    tally.status("shm-shrunk", _code(exc))
                finally:
                    stop.set()
                    if meddler.is_alive():
                        meddler.join()
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                tally.frames(len(frames), answers)
            else:  # keys that name no plain object
                path = root / f"{name}-odd"
                kind = ("symlink", "fifo", "dir")[(turn // 2) % 3]
                if kind == "symlink":
                    path.symlink_to("/dev/zero")
                elif kind == "fifo":
                    os.mkfifo(path)
                else:
                    path.mkdir()
                try:
                    config = pb.StreamRequest(
                        config=pb.StreamConfig(
                            model=pb.ModelSelector(name="squeezenet"),
                            top_k=1,
                            shared_memory=pb.SharedMemoryRegion(key="/" + path.name, byte_size=4096),
                        )
                    )
                    list(stub.StreamClassify(iter([config]), timeout=10))
                    tally.status(f"shm-{kind}", "OK")
                except grpc.RpcError as exc:
                    tally.status(f"shm-{kind}", _code(exc))
                finally:
                    if kind == "dir":
                        path.rmdir()
                    else:
                        path.unlink()

    _loop(end, 0.3, once)


def garbage(target: str, end: float, tally: Tally) -> None:
    rng = random.Random(0)
    methods = [SERVICE + "Classify", SERVICE + "GetModel", SERVICE + "ListModels", "/grpc.health.v1.Health/Check"]
    with grpc.insecure_channel(target) as ch:

        def once() -> None:
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
            for m in methods:
                try:
                    ch.unary_unary(m)(b"\xff\xff" + junk, timeout=10)
                    tally.status("garbage-unary", "OK")
                except grpc.RpcError as exc:
                    tally.status("garbage-unary", _code(exc))
            try:
                list(ch.stream_stream(SERVICE + "StreamClassify")(iter([b"\x0a\xff" + junk]), timeout=10))
                tally.status("garbage-stream", "OK")
            except grpc.RpcError as exc:
                tally.status("garbage-stream", _code(exc))

        _loop(end, 0.2, once)


def health_probe(target: str, end: float, tally: Tally) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def once() -> None:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
                tally.status("health", health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
            except grpc.RpcError as exc:
                tally.status("health", _code(exc))

        _loop(end, 1.0, once)


HOSTILE = {
    "huge-declared": huge_declared,
    "config-less": config_less,
    "abandoned": abandoned,
    "shm-tricks": shm_tricks,
    "garbage": garbage,
    "health": health_probe,
}
