"""Which streams are open, and the timeouts that keep a client from holding one for nothing.

A stream holds a gRPC handler thread for its whole life, from the moment it is
opened, before its config arrives. So a stream counts against ``--max-streams``
as soon as it opens (half-open included), and one over the limit is refused at
once: the handler pool (``max_streams`` + spare threads, server/app.py) then
always has threads for health checks and unary calls. A stream that sends no
config within ``--config-timeout`` seconds, or neither sends a frame nor takes an
answer for ``--idle-timeout`` seconds, is ended with DEADLINE_EXCEEDED, logged and
counted (``edgeinfer_streams_timed_out_total``). A stream whose client stopped
reading its answers sits in a send that only the client can finish; it is
cancelled a few seconds after its idle timeout.

On shutdown :meth:`StreamGuard.drain` ends every stream after the answers to the
frames it has already read. After streams end, the guard hands the memory their
frames took back to the system (:func:`release_freed_memory`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import grpc

from edgeinfer.server import metrics
from edgeinfer.server.defaults import DEFAULT_CONFIG_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, LimitExceeded
from edgeinfer.server.memory import release_freed_memory

if TYPE_CHECKING:
    from edgeinfer.server.session import StreamSession

__all__ = [
    "DEFAULT_CONFIG_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "TRIM_EVERY_S",
    "GuardedStream",
    "StreamGuard",
]

log = logging.getLogger(__name__)

_CANCEL_AFTER_S = 2.0  # an idle stream still open this long after its error is stuck in a send: cancelled


# After streams end, the memory their frames took goes back to the system at most this often.
TRIM_EVERY_S = 5.0


class GuardedStream:
    """One open stream as the guard sees it."""

    __slots__ = ("answers_out", "cancel_at", "context", "frames_in", "last_active", "peer", "sending", "session")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.peer = context.peer()
        self.session: StreamSession | None = None  # set once the config is accepted
        self.last_active = time.monotonic()
        self.cancel_at = 0.0
        self.frames_in = 0  # frames read
        self.answers_out = 0  # answers sent (gRPC took them)
        self.sending = False  # the handler is in a send, which only the client can complete

    def touch(self) -> None:
        """A message came in or an answer went out."""
        self.last_active = time.monotonic()

    @property
    def idle_by_client(self) -> bool:
        """Nothing is owed to the client, or the client does not take what is: the wait is the client's doing.

        A stream whose frames wait for a busy model is not idle, however long the model takes.
        """
        return self.sending or self.answers_out >= self.frames_in


class StreamGuard:
    def __init__(
        self,
        *,
        max_streams: int,
        config_timeout: float = DEFAULT_CONFIG_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        self.max_streams = max_streams
        self.config_timeout = config_timeout
        self.idle_timeout = idle_timeout  # 0: streams may idle for ever
        self._streams: set[GuardedStream] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.timed_out = {"config": 0, "idle": 0}
        self.opened = 0  # streams admitted since start
        self._ended_since_trim = False
        self._last_trim = 0.0

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._streams)

    def admit(self, context: grpc.ServicerContext) -> GuardedStream:
        """Count a stream that has just opened, or refuse it (RESOURCE_EXHAUSTED) when the daemon is full."""
        stream = GuardedStream(context)
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise LimitExceeded(
                    f"this daemon already serves {len(self._streams)} streams (--max-streams {self.max_streams}); "
                    f"close one or start the daemon with a higher --max-streams"
                )
            self._streams.add(stream)
            self.opened += 1
            metrics.ACTIVE_STREAMS.set(len(self._streams))
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="stream-guard", daemon=True)
                self._thread.start()
        return stream

    def release(self, stream: GuardedStream) -> None:
        with self._lock:
            self._streams.discard(stream)
            metrics.ACTIVE_STREAMS.set(len(self._streams))
            self._ended_since_trim = True

    def config_timed_out(self, stream: GuardedStream) -> DeadlineExceeded:
        self._count("config", stream)
        return DeadlineExceeded(
            f"no StreamConfig within {self.config_timeout:g} s of opening the stream (--config-timeout); "
            f"send the config as the stream's first message"
        )

    def drain(self, error: EdgeInferError) -> int:
        """End every open stream after the answers to the frames it has read; returns how many."""
        with self._lock:
            sessions = [s.session for s in self._streams if s.session is not None]
        for session in sessions:
            session.fail(error)
        return len(sessions)

    def stop(self) -> None:
        self._wake.set()

    def _count(self, reason: str, stream: GuardedStream) -> None:
        with self._lock:
            self.timed_out[reason] += 1
        metrics.STREAMS_TIMED_OUT.labels(reason).inc()
        log.warning("stream from %s timed out: %s", stream.peer, "no config" if reason == "config" else "idle")

    def _watch(self) -> None:
        tick = min(1.0, self.idle_timeout / 4) if self.idle_timeout > 0 else 1.0
        while not self._wake.wait(tick):
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
                trim = self._ended_since_trim and now - self._last_trim >= TRIM_EVERY_S
                if trim:
                    self._ended_since_trim, self._last_trim = False, now
            if trim:
                release_freed_memory()
            if self.idle_timeout <= 0:
                continue
            for stream in streams:
                session = stream.session
                if session is None:  # waiting for its config: its handler times that out itself
                    continue
                if stream.cancel_at:
                    if now >= stream.cancel_at:
                        stream.cancel_at = float("inf")
                        session.abort()
                        stream.context.cancel()  # its handler sits in a send the client never takes
                    continue
                if now - stream.last_active > self.idle_timeout and stream.idle_by_client:
                    stream.cancel_at = now + _CANCEL_AFTER_S
                    self._count("idle", stream)
                    session.fail(
                        DeadlineExceeded(
                            f"the stream sent no frame and took no answer for {self.idle_timeout:g} s "
                            f"(--idle-timeout); open a new stream when the camera resumes"
                        )
                    )
