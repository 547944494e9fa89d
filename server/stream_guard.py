"""Which streams are open, and the clocks that keep a client from holding one for nothing.

Every stream, ``edgeinfer.v1``'s StreamClassify and KServe's ModelStreamInfer alike,
counts against ``--max-streams`` as soon as it opens (before its first message),
and one over the limit is refused at once. A stream that sends no first message
(v1's config, v2's first request) within ``--config-timeout`` seconds, or neither
sends a frame nor takes an answer for ``--idle-timeout`` seconds, is ended with
DEADLINE_EXCEEDED, logged and counted (``edgeinfer_streams_timed_out_total``). A
stream whose client stopped reading its answers sits in a send only the client can
finish; its handler is cancelled a few seconds after its idle error.

The guard lives on the daemon's event loop (:mod:`edgeinfer.server.event_loop`):
every method but the two counters is called there. On shutdown :meth:`StreamGuard.drain`
ends every stream after the answers to the frames it has already read. After streams
end, the guard hands the memory their frames took back to the system
(:func:`release_freed_memory`), off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import grpc

from edgeinfer.server import metrics
from edgeinfer.server.defaults import DEFAULT_CONFIG_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, LimitExceeded
from edgeinfer.server.memory import release_freed_memory

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


class Ending(Protocol):
    """What the guard ends: a v1 stream's session, or a v2 stream."""

    def fail(self, exc: EdgeInferError) -> None: ...  # answer what was read, then end with ``exc``

    def abort(self) -> None: ...  # the peer is gone: stop everything now


class GuardedStream:
    """One open stream as the guard sees it."""

    __slots__ = (
        "answers_out",
        "cancel_at",
        "context",
        "frames_in",
        "last_active",
        "peer",
        "sending",
        "session",
        "task",
    )

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.context = context
        self.peer = context.peer()
        self.task = asyncio.current_task()  # its handler: cancelled when stuck in a send
        self.session: Ending | None = None  # set once its first message is accepted
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
        self._watcher: asyncio.Task[None] | None = None
        self._cancelling: set[asyncio.Future[None]] = set()
        self.timed_out = {"config": 0, "idle": 0}
        self.opened = 0  # streams admitted since start
        self._ended_since_trim = False
        self._last_trim = 0.0

    @property
    def open(self) -> int:
        """Streams open now (read from any thread)."""
        return len(self._streams)

    def admit(self, context: grpc.aio.ServicerContext) -> GuardedStream:
        """Count a stream that has just opened, or refuse it (RESOURCE_EXHAUSTED) when the daemon is full."""
        if len(self._streams) >= self.max_streams:
            raise LimitExceeded(
                f"this daemon already serves {len(self._streams)} streams (--max-streams {self.max_streams}); "
                f"close one or start the daemon with a higher --max-streams"
            )
        stream = GuardedStream(context)
        self._streams.add(stream)
        self.opened += 1
        metrics.ACTIVE_STREAMS.set(len(self._streams))
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return stream

    async def first_message(self, stream: GuardedStream, read: asyncio.Future[object] | object) -> object:
        """The stream's first message, or DEADLINE_EXCEEDED (counted) after --config-timeout."""
        try:
            return await asyncio.wait_for(read, self.config_timeout)  # type: ignore[arg-type]
        except asyncio.TimeoutError:
            raise self.config_timed_out(stream) from None

    def release(self, stream: GuardedStream) -> None:
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
        sessions = [s.session for s in self._streams if s.session is not None]
        for session in sessions:
            session.fail(error)
        return len(sessions)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    def _count(self, reason: str, stream: GuardedStream) -> None:
        self.timed_out[reason] += 1
        metrics.STREAMS_TIMED_OUT.labels(reason).inc()
        log.warning("stream from %s timed out: %s", stream.peer, "no config" if reason == "config" else "idle")

    async def _watch(self) -> None:
        tick = min(1.0, self.idle_timeout / 4) if self.idle_timeout > 0 else 1.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)  # holding no stream meanwhile: a closed one's session goes at once
            now = time.monotonic()
            if self._ended_since_trim and now - self._last_trim >= TRIM_EVERY_S:
                self._ended_since_trim, self._last_trim = False, now
                await loop.run_in_executor(None, release_freed_memory)
            if self.idle_timeout > 0:
                self._check_all(now)

    def _check_all(self, now: float) -> None:
        for stream in list(self._streams):
            self._check(stream, now)

    def _check(self, stream: GuardedStream, now: float) -> None:
        session = stream.session
        if session is None:  # waiting for its first message: its handler times that out itself
            return
        if stream.cancel_at:
            if now >= stream.cancel_at:
                stream.cancel_at = float("inf")
                session.abort()
                # Its handler sits in a send the client never takes: the call ends CANCELLED.
                cancelling = asyncio.ensure_future(_cancel(stream))
                self._cancelling.add(cancelling)  # kept until done: the loop holds tasks weakly
                cancelling.add_done_callback(self._cancelling.discard)
            return
        if now - stream.last_active > self.idle_timeout and stream.idle_by_client:
            stream.cancel_at = now + _CANCEL_AFTER_S
            self._count("idle", stream)
            session.fail(
                DeadlineExceeded(
                    f"the stream sent no frame and took no answer for {self.idle_timeout:g} s "
                    f"(--idle-timeout); open a new stream when the camera resumes"
                )
            )


async def _cancel(stream: GuardedStream) -> None:
    """End a call whose handler is stuck in a send: its status goes out (CANCELLED), its handler ends.

    grpc.aio has no ``context.cancel()``; an abort from another task sets the status and
    fails the pending send, and cancelling the handler's task (a second on, whatever the
    abort did) frees whatever it awaited.
    """
    abort = asyncio.ensure_future(
        stream.context.abort(
            grpc.StatusCode.CANCELLED,
            "the client took no answer for longer than --idle-timeout; the stream was cancelled",
        )
    )
    await asyncio.wait([abort], timeout=_CANCEL_AFTER_S / 2)
    if stream.task is not None and not stream.task.done():
        stream.task.cancel()
    if abort.done() and not abort.cancelled():
        abort.exception()  # the abort's own AbortError, or the call was over: retrieved, not logged
