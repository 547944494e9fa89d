"""EdgeClient: the Python API robots and pipelines call.

    with EdgeClient("localhost:50051") as client:
        for result in client.stream(capture_frames(0), model="squeezenet"):
            print(result.sequence, result.prediction.top1.label if result.prediction else result.kind)

Several daemons: give a target that resolves to many addresses and the calls
spread over them (gRPC's ``round_robin``; see :class:`EdgeClient`)::

    EdgeClient("dns:///edgeinfer.robots.svc.cluster.local:50051")  # a headless Kubernetes Service
    EdgeClient("ipv4:10.0.0.5:50051,10.0.0.6:50051")

Every call takes a timeout; every failure is one :class:`EdgeInferError` that
keeps the gRPC status code. Streaming runs the sender in gRPC's own thread and
yields answers as they arrive, one per frame, in frame order.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

import grpc
import numpy as np

from edgeinfer.client.errors import EdgeInferError
from edgeinfer.client.frames import Encoder, Frame, as_frame
from edgeinfer.client.results import FrameResult, ModelInfo, Prediction
from edgeinfer.client.security import Credentials, Pem, describe_handshake_failure
from edgeinfer.client.shm import DEFAULT_SLOTS, SharedMemoryFrames
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

__all__ = ["DROP_POLICIES", "LOAD_BALANCING", "EdgeClient", "channel_options"]

DROP_POLICIES = {"latest": pb.DROP_POLICY_LATEST, "all": pb.DROP_POLICY_ALL}

# gRPC's default policy, pick_first, sends every call to the first address that
# answers, so a name with three daemons behind it would load one. round_robin keeps
# a connection to every address the resolver returns and gives each new call
# (a stream or a unary call) to the next ready one. It is the channel's *default*
# service config: a service config published by the resolver (DNS TXT, xDS) wins.
# https://github.com/grpc/grpc/blob/master/doc/service_config.md
LOAD_BALANCING = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(max_message_bytes: int = 16 << 20) -> list[tuple[str, int | str]]:
    """Every channel option the client sets, named once and explained."""
    return [
        ("grpc.service_config", LOAD_BALANCING),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Ping every 30 s so a dead link (robot out of Wi-Fi) is noticed within
        # ~40 s instead of the OS TCP timeout; the daemon permits this rate.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class EdgeClient:
    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float = 10.0,
        channel: grpc.Channel | None = None,
        tls_ca: Pem | None = None,
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        """``target``: host:port, or unix:/path for a daemon on the same board.

        A target that resolves to several addresses spreads the calls over them:
        the channel runs gRPC's ``round_robin`` load-balancing policy (set as the
        channel's default service config, ``LOAD_BALANCING``), so each new stream or
        unary call goes to the next daemon whose connection is ready, and a daemon
        that goes away is skipped until it is back. Such targets are
        ``dns:///name:port`` (every A/AAAA record of the name, re-resolved when a
        connection drops; a headless Kubernetes Service gives one per pod) and
        ``ipv4:10.0.0.5:50051,10.0.0.6:50051`` (or ``ipv6:[::1]:50051,...``), a
        fixed list. A stream stays on the daemon it started on; a plain host:port
        or unix:/path is one daemon, as before. A ``channel`` passed in is used
        as it is (its own options, its own policy).

        ``timeout`` is the default deadline, in seconds, of every unary call.
        ``tls_ca``: connect with TLS, trusting this CA (a path or PEM bytes); ``tls_cert``/``tls_key``: the
        client certificate for a daemon with mutual TLS. ``token``: the bearer token (default: the
        ``EDGEINFER_TOKEN`` environment variable); without TLS it is sent only to this host (Unix socket
        or loopback) unless ``insecure`` is set. A file that cannot be read raises ValueError.
        """
        self.target = target
        self.timeout = timeout
        self._credentials = Credentials(
            tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token, insecure=insecure
        )
        self._channel = channel or self._credentials.channel(target, channel_options())
        self._stub = pb_grpc.EdgeInferenceStub(self._channel)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- unary -------------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def model(self, name: str, *, precision: str = "", timeout: float | None = None) -> ModelInfo:
        request = pb.GetModelRequest(model=pb.ModelSelector(name=name, precision=precision))
        return ModelInfo.from_proto(self._call(self._stub.GetModel, request, timeout))

    def wait_ready(self, model: str, *, precision: str = "", timeout: float = 60.0) -> ModelInfo:
        """Block until the daemon serves ``model`` (it answers UNAVAILABLE while loading)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.model(model, precision=precision, timeout=max(0.1, min(remaining, 5.0)))
            except EdgeInferError as exc:
                if exc.handshake or exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if remaining <= 0:
                    raise
            time.sleep(0.1)

    def classify(
        self,
        image: np.ndarray | bytes | Frame,
        model: str = "squeezenet",
        *,
        top_k: int = 5,
        precision: str = "",
        encoding: str = "jpeg",
        quality: int = 90,
        timeout: float | None = None,
    ) -> Prediction:
        if encoding == "shm":
            raise ValueError("encoding='shm' needs a stream (stream()); use 'raw' or 'jpeg' for classify()")
        frame = as_frame(image, 0)
        request = pb.ClassifyRequest(model=pb.ModelSelector(name=model, precision=precision), top_k=top_k)
        Encoder(encoding, quality).write(frame, request.image)
        return Prediction.from_proto(self._call(self._stub.Classify, request, timeout))

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object, timeout: float | None) -> object:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> EdgeInferError:
        """The library's exception; a failed TLS handshake gets one line naming its cause."""
        error = EdgeInferError.from_rpc_error(exc)
        if error.code == grpc.StatusCode.UNAVAILABLE:
            cause = describe_handshake_failure(error.details, self._credentials, self.target)
            if cause is not None:
                return EdgeInferError(error.code, cause, handshake=True)
        return error

    # -- streaming ---------------------------------------------------------------

    def stream(
        self,
        frames: Iterable[np.ndarray | bytes | Frame],
        model: str = "squeezenet",
        *,
        top_k: int = 5,
        precision: str = "",
        drop_policy: str = "latest",
        encoding: str = "jpeg",
        quality: int = 90,
        timeout: float | None = None,
        shm_slots: int = DEFAULT_SLOTS,
    ) -> Iterator[FrameResult]:
        """Send ``frames`` and yield one :class:`FrameResult` per frame, in order.

        ``encoding``: "jpeg" (default), "raw" (uint8 pixels in the message), or
        "shm" for a daemon on this host (``unix:`` target or loopback): pixels go
        through ``shm_slots`` shared-memory slots sized for the first frame, and
        only a handle travels (see :mod:`edgeinfer.client.shm`).
        ``timeout`` bounds the whole stream (None: no deadline, as for a camera).
        A frame the daemon cannot use comes back as a result with an error; a
        stream-level failure (unknown model, bad top_k) raises EdgeInferError.
        """
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {sorted(DROP_POLICIES)}, got {drop_policy!r}")
        encoder = Encoder(encoding, quality)
        config = pb.StreamConfig(
            model=pb.ModelSelector(name=model, precision=precision),
            top_k=top_k,
            drop_policy=DROP_POLICIES[drop_policy],
        )
        pool: SharedMemoryFrames | None = None
        if encoding == "shm":  # slots sized for the first frame
            source = iter(frames)
            first = next(source, None)
            frames = source if first is None else itertools.chain([first], source)
            pixels = first.image if isinstance(first, Frame) else first
            if isinstance(pixels, np.ndarray):
                pool = SharedMemoryFrames(pixels.nbytes, shm_slots)
                config.shared_memory.CopyFrom(pool.region)
        sent_at: dict[int, float] = {}
        failure: list[BaseException] = []
        done = threading.Event()

        def requests() -> Iterator[pb.StreamRequest]:
            yield pb.StreamRequest(config=config)
            try:
                for i, item in enumerate(frames):
                    if done.is_set():
                        return
                    frame = as_frame(item, i)
                    assert frame.sequence is not None and frame.capture_time_ns is not None  # as_frame sets them
                    # Latency counts from here: encoding (JPEG, or the copy into shared memory) is part of it.
                    sent_at[frame.sequence] = time.perf_counter()
                    request = pb.StreamRequest()  # filled in place: see Encoder.write
                    request.frame.sequence = frame.sequence
                    request.frame.capture_time_ns = frame.capture_time_ns
                    if pool is None or not pool.write(frame.image, request.frame.image, bgr=frame.bgr):
                        encoder.write(frame, request.frame.image)
                    yield request
            except Exception as exc:  # gRPC would swallow it and report CANCELLED
                failure.append(exc)
                raise

        call = self._stub.StreamClassify(requests(), timeout=timeout)
        try:
            for response in call:
                if pool is not None:
                    pool.answered()
                start = sent_at.pop(response.sequence, None)
                latency = (time.perf_counter() - start) * 1e3 if start is not None else None
                yield FrameResult.from_proto(response, latency)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise self._error(exc) from None
        finally:
            done.set()
            call.cancel()
            if pool is not None:
                pool.close()
