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

import json
import time
from collections.abc import Callable, Iterable
from types import TracebackType

import grpc
import numpy as np

from edgeinfer.client.errors import EdgeInferError, as_client_error
from edgeinfer.client.frames import Encoder, Frame, as_frame
from edgeinfer.client.results import ModelInfo, Prediction
from edgeinfer.client.security import Credentials, Pem, describe_handshake_failure
from edgeinfer.client.shm import DEFAULT_SLOTS
from edgeinfer.client.streaming import ResultStream, StreamOptions, prepare
from edgeinfer.media.images import Fit
from edgeinfer.media.sources import ImageFile
from edgeinfer.media.sources import SourceError as MediaSourceError
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

__all__ = ["DROP_POLICIES", "LOAD_BALANCING", "RESIZE_MODES", "EdgeClient", "channel_options"]

DROP_POLICIES = {"latest": pb.DROP_POLICY_LATEST, "all": pb.DROP_POLICY_ALL}
RESIZE_MODES = ("auto", "off")

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
        # A daemon that restarts is back in seconds: gRPC's reconnect backoff (1 s doubling
        # to 120 s by default) would leave a robot blind for minutes after a longer outage.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 4_000),
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
        self._fits: dict[tuple[str, str], Fit] = {}  # (model, precision) -> what frames shrink to, for classify()

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

    def wait_ready(
        self,
        model: str,
        *,
        precision: str = "",
        timeout: float = 60.0,
        on_wait: Callable[[EdgeInferError], None] | None = None,
    ) -> ModelInfo:
        """Block until the daemon serves ``model`` (it answers UNAVAILABLE while loading).

        ``on_wait(error)`` is called once, at the first failed try, so a user hears at once
        that the daemon is not there yet (not after ``timeout`` seconds of silence).
        """
        deadline = time.monotonic() + timeout
        told = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.model(model, precision=precision, timeout=max(0.1, min(remaining, 5.0)))
            except EdgeInferError as exc:
                if exc.handshake or exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if remaining <= 0:
                    raise EdgeInferError(
                        exc.code, f"the daemon at {self.target} was not ready within {timeout:g} s ({exc.explanation})"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(exc)
                    told = True
            time.sleep(0.1)

    def classify(
        self,
        image: np.ndarray | bytes | Frame | ImageFile,
        model: str = "squeezenet",
        *,
        top_k: int = 5,
        precision: str = "",
        encoding: str = "jpeg",
        quality: int = 90,
        resize: str = "auto",
        timeout: float | None = None,
    ) -> Prediction:
        """Top-k of one image. ``resize="auto"`` first shrinks a larger image to what the model keeps of it."""
        if encoding == "shm":
            raise ValueError("encoding='shm' needs a stream (stream()); use 'raw' or 'jpeg' for classify()")
        _check_resize(resize)
        frame = as_frame(image, 0)  # type: ignore[arg-type]
        fit = Fit()
        if resize == "auto" and isinstance(frame.image, (np.ndarray, ImageFile)):
            key = (model, precision)
            if key not in self._fits:  # asked once per model, not once per image
                self._fits[key] = self.model(model, precision=precision, timeout=timeout).fit
            fit = self._fits[key]
        try:
            prepare(frame, fit, need_pixels=encoding != "jpeg")
        except MediaSourceError as exc:
            raise as_client_error(exc) from exc
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
        frames: Iterable[np.ndarray | bytes | Frame | ImageFile],
        model: str = "squeezenet",
        *,
        top_k: int = 5,
        precision: str = "",
        drop_policy: str = "latest",
        encoding: str = "jpeg",
        quality: int = 90,
        resize: str = "auto",
        reconnect: bool = True,
        max_outage: float | None = 60.0,
        on_status: Callable[[str], None] | None = None,
        timeout: float | None = None,
        shm_slots: int = DEFAULT_SLOTS,
    ) -> ResultStream:
        """Send ``frames`` and yield one :class:`FrameResult` per frame, in order.

        ``frames``: BGR arrays, JPEG bytes, :class:`Frame`, or ``ImageFile`` (from
        ``image_files``: a JPEG goes byte for byte, other formats are decoded; a file
        that cannot be read or decoded is answered with a per-frame error).
        ``drop_policy="all"`` reads ``frames`` only as fast as answers come back: at most
        ``streaming.MAX_IN_FLIGHT`` (16) frames are out unanswered; "latest" sends what
        the source delivers and the daemon drops what its model cannot keep up with.
        ``encoding``: "jpeg" (default), "raw" (uint8 pixels in the message), or
        "shm" for a daemon on this host (``unix:`` target or loopback): pixels go
        through ``shm_slots`` shared-memory slots sized for the first frame, and
        only a handle travels (see :mod:`edgeinfer.client.shm`).
        ``resize="auto"``: of a frame larger than the model needs, only the part the
        daemon's center crop keeps is sent, shrunk here to the daemon's resize size
        (both from GetModel; area interpolation, a JPEG file through its decoder's DCT
        scaling) before it is encoded: the daemon's resize is then the identity, its
        crop takes the same pixels, and far fewer bytes travel. "off": frames go as they are.
        ``reconnect=True``: when the daemon restarts or the connection drops, frames in
        flight are answered ``dropped``, the stream waits for the daemon (up to
        ``max_outage`` seconds, None: forever; a daemon this stream never reached, up to the
        client's ``timeout``; never past the source's end), re-sends its config and goes on;
        ``on_status(message)`` hears about it, the returned stream counts ``reconnects``.
        ``reconnect=False`` raises at the first loss.
        ``timeout`` bounds the whole stream (None: no deadline, as for a camera).
        A frame the daemon cannot use comes back as a result with an error; a
        stream-level failure (unknown model, bad top_k) raises EdgeInferError, as does a
        frame source that fails (``SourceError``), after the frames before it are answered.
        """
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {sorted(DROP_POLICIES)}, got {drop_policy!r}")
        _check_resize(resize)
        options = StreamOptions(
            config=pb.StreamConfig(
                model=pb.ModelSelector(name=model, precision=precision),
                top_k=top_k,
                drop_policy=DROP_POLICIES[drop_policy],
            ),
            encoder=Encoder(encoding, quality),
            drop_latest=drop_policy == "latest",
            resize=resize,
            reconnect=reconnect,
            max_outage=max_outage,
            first_contact=self.timeout,
            timeout=timeout,
            shm_slots=shm_slots,
            on_status=on_status,
        )

        def fit() -> Fit:
            try:
                return self.model(model, precision=precision).fit
            except EdgeInferError as exc:  # a server without GetModel (a bare gRPC peer): frames go as they are
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    return Fit()
                raise

        return ResultStream(self._stub, self._channel, self.target, fit, frames, options, self._error)


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
