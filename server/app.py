"""Assembles the daemon: gRPC server, servicers, health, reflection, models.

``Daemon`` is kept apart from the command line (grpc's examples do the same
with ``create_server``) so tests start a real server on ``localhost:0``.
Start-up order: listen, report NOT_SERVING, load models, report SERVING. On
shutdown: report NOT_SERVING, refuse new streams, answer every frame already
read, end the streams.
Who may connect (loopback by default, TLS, tokens) is :mod:`edgeinfer.server.security`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server.defaults import (
    DEFAULT_CONFIG_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)
from edgeinfer.server.kserve_servicer import KSERVE_SERVICE_NAME, KServeServicer, add_kserve_to_server
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.malformed import MalformedRequestInterceptor, StatusInterceptor
from edgeinfer.server.security import (
    LOOPBACK,
    BearerTokenInterceptor,
    SecurityConfigError,
    ServerTls,
    Tokens,
    check_exposure,
)
from edgeinfer.server.servicer import MAX_UNARY_INFER_CALLS, EdgeInferenceServicer

__all__ = ["HANDLER_SPARE", "MESSAGE_OVERHEAD", "SERVICE_NAME", "Daemon", "server_options"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeInference"].full_name
HANDLER_SPARE = 4  # handler threads no stream or Classify call can take: health, metadata, reflection
MESSAGE_OVERHEAD = 64 << 10  # a frame message's fields besides its image bytes, with room to spare
_daemons = itertools.count(1)  # names each daemon's handler threads apart: grpc-handler-1_0, ...


def server_options(max_frame_bytes: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Every channel option the daemon sets, each named once and explained."""
    return [
        # Frames over --max-frame-bytes are answered with a per-frame
        # RESOURCE_EXHAUSTED and the stream goes on; gRPC's own limit sits just
        # above it (room for the message's other fields), so that a message far
        # over it ends the stream before gRPC has buffered it (issue 16).
        ("grpc.max_receive_message_length", max_frame_bytes + MESSAGE_OVERHEAD),
        ("grpc.max_send_message_length", 4 << 20),
        # Robots lose Wi-Fi: let clients ping every 10 s to keep NAT entries and
        # detect dead peers, without the server answering with GOAWAY.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # The server pings idle connections too, and drops peers that stop answering.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # One daemon per port: refuse to share it with a second one, except
        # `edgeserver --workers N`, whose workers share it (the kernel spreads connections).
        ("grpc.so_reuseport", int(reuse_port)),
    ]


class Daemon:
    def __init__(
        self,
        addresses: Sequence[str] = (f"{LOOPBACK}:0",),
        *,
        max_streams: int = 16,
        max_frame_bytes: int = 8 << 20,
        max_shm_bytes: int = 256 << 20,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        config_timeout: float = DEFAULT_CONFIG_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        reuse_port: bool = False,
        health_addresses: Sequence[str] = (),
        tls: ServerTls | None = None,
        tokens: Tokens | None = None,
        insecure: bool = False,
    ) -> None:
        """``addresses``: ``host:port`` or ``unix:/path``; ``tls`` covers every TCP one (a Unix socket stays
        plaintext: it never leaves the host). A non-loopback address without ``tls`` raises ExposureError
        unless ``insecure``. ``tokens``: every call but health checks needs one of them.

        ``health_addresses``: also serve grpc.health.v1, and nothing else, in plaintext there.
        Kubernetes' native gRPC probes dial plaintext with no client certificate, so a daemon
        that serves TLS answers them on a port of its own (deploy/daemon.yaml). It tells only
        SERVING or NOT_SERVING, so it needs neither TLS nor a token.
        """
        # Before anything binds or loads: a refused configuration costs nothing.
        self.plaintext_exposed = check_exposure(addresses, tls=tls is not None, insecure=insecure)
        self.tls = tls
        self.tokens = tokens
        self.table = ModelTable()
        self.limits = FrameLimits(max_frame_bytes=max_frame_bytes, max_pixels=max_pixels, max_side=max_side)
        self.servicer = EdgeInferenceServicer(
            self.table,
            max_streams=max_streams,
            max_shm_bytes=max_shm_bytes,
            limits=self.limits,
            config_timeout=config_timeout,
            idle_timeout=idle_timeout,
        )
        # A stream holds one handler thread for its life, from the moment it opens
        # (config or not: server/stream_guard.py counts it then, and refuses one over
        # --max-streams at once); unary calls and health checks need a few more, so
        # they never wait behind streams.
        self._handler_prefix = f"grpc-handler-{next(_daemons)}"
        # Unary inference calls are capped too (MAX_UNARY_INFER_CALLS), so that however many a client
        # sends at once, HANDLER_SPARE threads stay free for health checks and metadata.
        self._pool = ThreadPoolExecutor(
            max_workers=max_streams + MAX_UNARY_INFER_CALLS + HANDLER_SPARE, thread_name_prefix=self._handler_prefix
        )
        # Outermost first: a refused token runs nothing else; then bytes that do not parse become an
        # error the status interceptor maps to INVALID_ARGUMENT (gRPC itself would answer INTERNAL).
        interceptors: list[grpc.ServerInterceptor] = [StatusInterceptor(), MalformedRequestInterceptor()]
        if tokens is not None:
            interceptors.insert(0, BearerTokenInterceptor(tokens))
        self.server = grpc.server(
            self._pool,
            interceptors=interceptors,
            options=server_options(max_frame_bytes, reuse_port),
        )
        pb_grpc.add_EdgeInferenceServicer_to_server(self.servicer, self.server)
        # The Open Inference Protocol (KServe v2) on the same server: same models, interceptors and ports.
        self.kserve = KServeServicer(self.table, self.servicer)
        add_kserve_to_server(self.kserve, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        credentials = tls.server_credentials() if tls is not None else None
        self.ports = [
            self.server.add_insecure_port(a)
            if credentials is None or a.startswith(("unix:", "unix-abstract:"))
            else self.server.add_secure_port(a, credentials)
            for a in addresses
        ]
        self.addresses = list(addresses)
        self.health_server: grpc.Server | None = None
        self.health_ports: list[int] = []
        if health_addresses:
            # Two threads: probes are a few unary Check calls a second at most.
            self.health_server = grpc.server(
                ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self._handler_prefix}-health"),
                options=[("grpc.so_reuseport", int(reuse_port))],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_ports = [self.health_server.add_insecure_port(a) for a in health_addresses]
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def listening(self) -> list[str]:
        """The addresses as bound (port 0 replaced by the port the OS picked)."""
        return [
            a if a.startswith("unix:") else f"{a.rsplit(':', 1)[0]}:{p}"
            for a, p in zip(self.addresses, self.ports, strict=True)
        ]

    def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME, KSERVE_SERVICE_NAME):
            self.health.set(service, status)

    def reload_credentials(self) -> None:
        """SIGHUP: re-read the TLS files before the next handshake, and the token file now."""
        if self.tls is not None:
            self.tls.request_reload()
        if self.tokens is not None:
            try:
                self.tokens.reload()
            except SecurityConfigError as exc:
                log.warning("%s; the tokens read before stay in force", exc)

    def start(self) -> Daemon:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        return self

    def add_model(self, model: ServedModel) -> None:
        self.table.add(model)

    def mark_ready(self) -> None:
        self.table.ready = True
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Drain: NOT_SERVING, refuse new calls; open streams answer the frames they have read, then end.

        Streams still open ``grace`` seconds on (an answer the client does not take) are cancelled.
        """
        self.servicer.drain()
        self.health.enter_graceful_shutdown()
        # The health port stops with the rest: until then probes read NOT_SERVING, and no new streams arrive.
        health_stopped = self.health_server.stop(grace) if self.health_server is not None else None
        self.server.stop(grace).wait()
        if health_stopped is not None:
            health_stopped.wait()
        self.servicer.guard.stop()
        self.table.stop()
        self._pool.shutdown(wait=False)

    def busy_handlers(self, timeout: float) -> list[str]:
        """After stop(): the handler threads still running ``timeout`` seconds on (a call blocked for good).

        Python joins a thread pool's threads at exit, so one handler waiting on a model
        that never returns would keep the process alive forever; the command line exits
        without them instead.
        """
        deadline = time.monotonic() + timeout
        handlers = [t for t in threading.enumerate() if t.name.startswith(f"{self._handler_prefix}_")]
        for t in handlers:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in handlers if t.is_alive()]
