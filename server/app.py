"""Assembles the daemon: gRPC server, servicers, health, reflection, models.

``Daemon`` is kept apart from the command line (grpc's examples do the same
with ``create_server``) so tests start a real server on ``localhost:0``.
Start-up order: listen, report NOT_SERVING, load models, report SERVING. On
shutdown: report NOT_SERVING, refuse new streams, answer every frame already
read, end the streams.

Every service (edgeinfer.v1, KServe v2, health, reflection) is served by one
``grpc.aio`` server on one event loop (server/event_loop.py): a call that waits on
its client costs no thread. Every call passes the front door first (token, then
admission, server/front_door.py), before it reads its body.
Who may connect (loopback by default, TLS, tokens) is :mod:`edgeinfer.server.security`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server.admission import Admission, default_caps
from edgeinfer.server.byte_budget import ByteBudget
from edgeinfer.server.connection_cap import ConnectionCap
from edgeinfer.server.defaults import (
    DEFAULT_CONFIG_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)
from edgeinfer.server.event_loop import EventLoopThread
from edgeinfer.server.fair_share import FairShare, Turns
from edgeinfer.server.front_door import FrontDoor
from edgeinfer.server.health_watch import HealthServicer
from edgeinfer.server.kserve_servicer import KSERVE_SERVICE_NAME, KServeServicer, add_kserve_to_server
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.metrics import CONNECTIONS_OVER_PEER_CAP
from edgeinfer.server.security import (
    LOOPBACK,
    BearerTokenInterceptor,
    SecurityConfigError,
    ServerTls,
    Tokens,
    check_exposure,
)
from edgeinfer.server.servicer import EdgeInferenceServicer

__all__ = ["MESSAGE_OVERHEAD", "OVERSIZE_READ", "SERVICE_NAME", "Daemon", "connection_options", "server_options"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeInference"].full_name
MESSAGE_OVERHEAD = 64 << 10  # a frame message's fields besides its image bytes, with room to spare
OVERSIZE_READ = 2  # messages up to this many times --max-frame-bytes are read, and refused in-band
MAX_CALLS_PER_CONNECTION = 128  # HTTP/2 streams one connection may have open: every kind of call together


def connection_options(max_connections: int = DEFAULT_MAX_CONNECTIONS) -> list[tuple[str, int]]:
    """What a connection may hold, and how many there may be: the daemon's port and its --health-port alike."""
    return [
        # A connection with no call for two minutes is closed (clients reconnect when they call
        # again), and one that has not finished its handshake in 10 s (for plaintext: sent the
        # HTTP/2 preface and settings; measured: a silent socket is closed at 10.0 s): idle sockets
        # hold file descriptors, and 20,000 of them exhausted the daemon's.
        ("grpc.max_connection_idle_ms", 120_000),
        ("grpc.server_handshake_timeout_ms", 10_000),
        # And at most this many connections at once per listening address: gRPC's core closes
        # the next one as it is accepted, before any handshake (a --health-port is a listener of
        # its own, so probes still get through). gRPC Python has no hook at accept: the cap per
        # peer (--max-connections-per-peer) closes a peer's newest connections just after
        # (server/connection_cap.py).
        ("grpc.max_allowed_incoming_connections", max_connections),
    ]


def server_options(
    max_frame_bytes: int, reuse_port: bool = False, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> list[tuple[str, int]]:
    """Every channel option the daemon sets, each named once and explained."""
    return [
        *connection_options(max_connections),
        # Frames over --max-frame-bytes are answered with a per-frame
        # RESOURCE_EXHAUSTED and the stream goes on. gRPC's own limit ends the
        # call at once, with the answers to the frames before it unsent (issue 26),
        # so it sits at twice --max-frame-bytes: a frame a little over the limit is
        # read and answered in-band, and only a message far over it ends its stream
        # before gRPC has buffered it (issue 16).
        ("grpc.max_receive_message_length", OVERSIZE_READ * max_frame_bytes + MESSAGE_OVERHEAD),
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
        # What a connection may hold (issue 26). HTTP/2 streams open at once on one connection,
        # whatever their kind (admission caps each kind below that).
        ("grpc.max_concurrent_streams", MAX_CALLS_PER_CONNECTION),
        # gRPC grows a stream's flow-control window with its bandwidth-delay estimate, and read
        # gigabytes ahead of what the daemon had taken from fast senders; with the probe off, what
        # it reads ahead stays at its initial window per stream, and the daemon's byte budget
        # (server/byte_budget.py) bounds the rest.
        ("grpc.http2.bdp_probe", 0),
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER,
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

        ``max_connections`` (per listening address) and ``max_connections_per_peer`` (0: no cap) hold on
        the health port too, each server counted on its own.
        """
        # Before anything binds or loads: a refused configuration costs nothing.
        self.plaintext_exposed = check_exposure(addresses, tls=tls is not None, insecure=insecure)
        self.tls = tls
        self.tokens = tokens
        self.table = ModelTable()
        self.limits = FrameLimits(max_frame_bytes=max_frame_bytes, max_pixels=max_pixels, max_side=max_side)
        # Decoding before the inference thread (--preprocess-on stream, KServe tensors), in turn per connection.
        self.decode = FairShare(threads=min(4, os.cpu_count() or 1))
        self.budget = ByteBudget.for_frames(max_frame_bytes)
        self.servicer = EdgeInferenceServicer(
            self.table,
            max_streams=max_streams,
            max_shm_bytes=max_shm_bytes,
            limits=self.limits,
            config_timeout=config_timeout,
            idle_timeout=idle_timeout,
            decode=self.decode,
            budget=self.budget,
            turns=Turns(),
        )
        self.kserve = KServeServicer(self.table, self.servicer)
        self.admission = Admission(default_caps(max_streams))
        self._tokens_door = BearerTokenInterceptor(tokens) if tokens is not None else None
        self._body_timeout = config_timeout
        self._options = server_options(max_frame_bytes, reuse_port, max_connections)
        self._max_connections = max_connections
        self._max_connections_per_peer = max_connections_per_peer
        self.connection_cap: ConnectionCap | None = None
        self._stop_cap: Callable[[], None] | None = None
        self._loop = EventLoopThread()
        self.addresses = list(addresses)
        self.health_server: grpc.aio.Server | None = None
        self.health_ports: list[int] = []
        try:
            self._loop.run(self._build(addresses, health_addresses, reuse_port))
        except BaseException:
            self._loop.stop()
            self.decode.stop()
            raise
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _build(self, addresses: Sequence[str], health_addresses: Sequence[str], reuse_port: bool) -> None:
        """The servers, built on the loop they serve on."""
        door = FrontDoor(self.admission, tokens=self._tokens_door, body_timeout=self._body_timeout)
        self.server = grpc.aio.server(interceptors=[door], options=self._options)
        pb_grpc.add_EdgeInferenceServicer_to_server(self.servicer, self.server)
        # The Open Inference Protocol (KServe v2) on the same server: same models, door and ports.
        add_kserve_to_server(self.kserve, self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                KSERVE_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        credentials = self.tls.server_credentials() if self.tls is not None else None
        self.ports = [
            self.server.add_insecure_port(a)
            if credentials is None or a.startswith(("unix:", "unix-abstract:"))
            else self.server.add_secure_port(a, credentials)
            for a in addresses
        ]
        if health_addresses:
            # Probes only: health, in plaintext, behind the same door (health checks are never refused).
            door = FrontDoor(Admission(default_caps(0)), body_timeout=self._body_timeout)
            self.health_server = grpc.aio.server(
                interceptors=[door],
                options=[("grpc.so_reuseport", int(reuse_port)), *connection_options(self._max_connections)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_ports = [self.health_server.add_insecure_port(a) for a in health_addresses]
        if self._max_connections_per_peer and os.path.isdir("/proc/self/fd"):
            unix = ("unix:", "unix-abstract:")  # out of its reach: a Unix socket's peer has no address
            tcp = [p for a, p in zip(addresses, self.ports, strict=True) if not a.startswith(unix)]
            self.connection_cap = ConnectionCap(
                [tcp, self.health_ports],
                self._max_connections_per_peer,
                on_close=lambda _peer, n: CONNECTIONS_OVER_PEER_CAP.inc(n),
            )
        elif self._max_connections_per_peer:
            log.warning("no /proc/self/fd here: --max-connections-per-peer is not enforced")

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
        async def set_all() -> None:
            for service in ("", SERVICE_NAME, KSERVE_SERVICE_NAME):
                await self.health.set(service, status)

        self._loop.run(set_all())

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
        async def start() -> None:
            await self.server.start()
            if self.health_server is not None:
                await self.health_server.start()

        self._loop.run(start())
        if self.connection_cap is not None:
            self._stop_cap = self.connection_cap.start()
        return self

    def add_model(self, model: ServedModel) -> None:
        self.table.add(model)

    def mark_ready(self) -> None:
        self.table.ready = True
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = 5.0) -> None:
        """Drain: NOT_SERVING, refuse new calls; open streams answer the frames they have read, then end.

        Calls still open ``grace`` seconds on (an answer the client does not take, a model that
        does not answer) are cancelled.
        """
        if not self._loop.alive:
            return

        async def drain() -> None:
            self.servicer.drain()
            await self.health.enter_graceful_shutdown()
            # The health port stops with the rest: until then probes read NOT_SERVING, and no new streams arrive.
            servers = [self.server, *([self.health_server] if self.health_server is not None else [])]
            await asyncio.gather(*(s.stop(grace) for s in servers))
            self.servicer.guard.stop()

        try:
            self._loop.run(drain(), timeout=None if grace is None else grace + 10.0)
        finally:
            if self._stop_cap is not None:
                self._stop_cap()
            elif self.connection_cap is not None:  # never started: only its two descriptors to give back
                self.connection_cap.close()
            self._loop.stop()
            self.decode.stop()
            self.table.stop()

    def busy_handlers(self, timeout: float) -> list[str]:
        """After stop(): what still runs ``timeout`` seconds on. No call holds a thread, so only the loop's.

        The command line exits without it rather than wait forever.
        """
        deadline = time.monotonic() + timeout
        while self._loop.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        return ["grpc-loop"] if self._loop.alive else []
