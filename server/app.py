"""Assembles the daemon: gRPC server, servicers, health, reflection, models.

``Daemon`` is kept apart from the command line (grpc's examples do the same
with ``create_server``) so tests start a real server on ``localhost:0``.
Start-up order: listen, report NOT_SERVING, load models, report SERVING. On
shutdown: report NOT_SERVING, refuse new streams, answer every frame already
read, end the streams.
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
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.malformed import MalformedRequestInterceptor, StatusInterceptor
from edgeinfer.server.servicer import MAX_CLASSIFY_CALLS, EdgeInferenceServicer

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
        addresses: Sequence[str] = ("[::]:0",),
        *,
        max_streams: int = 16,
        max_frame_bytes: int = 8 << 20,
        max_shm_bytes: int = 256 << 20,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        config_timeout: float = DEFAULT_CONFIG_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        reuse_port: bool = False,
    ) -> None:
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
        # Classify calls are capped too (MAX_CLASSIFY_CALLS), so that however many a client
        # sends at once, HANDLER_SPARE threads stay free for health checks and metadata.
        self._pool = ThreadPoolExecutor(
            max_workers=max_streams + MAX_CLASSIFY_CALLS + HANDLER_SPARE, thread_name_prefix=self._handler_prefix
        )
        self.server = grpc.server(
            self._pool,
            # Outermost first: the second turns bytes that do not parse into an error the first maps to
            # INVALID_ARGUMENT (gRPC itself would answer INTERNAL).
            interceptors=[StatusInterceptor(), MalformedRequestInterceptor()],
            options=server_options(max_frame_bytes, reuse_port),
        )
        pb_grpc.add_EdgeInferenceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.ports = [self.server.add_insecure_port(a) for a in addresses]
        self.addresses = list(addresses)
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
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def start(self) -> Daemon:
        self.server.start()
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
        self.server.stop(grace).wait()
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
