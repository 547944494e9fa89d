"""One ``EdgeClient.stream()``: frames out, one answer per frame back, across daemon restarts.

A pump thread reads the frame source into a one-frame hand-over; each gRPC call's
request iterator takes frames from there, so the source outlives any one call.
Every frame taken is recorded as in flight until its answer arrives. When the
connection is lost (the daemon restarted, the network dropped: UNAVAILABLE), the
frames in flight are answered ``dropped`` here, the client waits for the daemon
with gRPC's own reconnect backoff, re-sends the config and goes on with the next
frames. While the daemon is away, a ``latest`` stream answers the frames its source
delivers as dropped (a camera does not wait); an ``all`` stream stops reading its
source until the daemon is back.

A frame that cannot even be prepared (an unreadable or damaged file) never goes
out; it is answered with a per-frame error in its place in the order.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from edgeinfer.client.errors import EdgeInferError, as_client_error
from edgeinfer.client.frames import Encoder, Frame, as_frame, prepare
from edgeinfer.client.results import FrameResult
from edgeinfer.client.shm import SharedMemoryFrames
from edgeinfer.media.images import Fit, shrink
from edgeinfer.media.sources import SourceError as MediaSourceError
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

__all__ = ["RECONNECT_CODES", "ResultStream", "StreamOptions", "prepare"]

# A call that ends with one of these lost its daemon, not its argument: try again.
RECONNECT_CODES = (grpc.StatusCode.UNAVAILABLE,)
_POLL_S = 0.1
_BACKOFF_S = (0.1, 2.0)  # waits between reconnect attempts: first, and the most (doubling)
_DRAIN_S = 0.02  # while waiting, how often a latest stream's captured frames are answered
# An ``all`` stream's frames sent and not yet answered, at most: twice the daemon's own window
# (StreamSession's 8), enough to keep it busy. Unbounded, a source read as fast as gRPC takes it
# (a folder) queues hundreds of frames in the transport: latency of a second, for no throughput.
MAX_IN_FLIGHT = 16


@dataclass
class StreamOptions:
    config: pb.StreamConfig
    encoder: Encoder
    drop_latest: bool
    resize: str  # "auto" or "off"
    reconnect: bool
    max_outage: float | None  # seconds without a daemon before giving up; None: never
    first_contact: float | None  # seconds to wait for a daemon never reached in this stream (the client's timeout)
    timeout: float | None  # the whole stream's deadline
    shm_slots: int
    on_status: Callable[[str], None] | None = None


@dataclass
class _Hand:
    """The one-frame hand-over between the source's pump thread and the calls' request iterators."""

    lock: threading.Condition = field(default_factory=threading.Condition)
    pending: collections.deque[Frame] = field(default_factory=collections.deque)
    ended: bool = False  # the source has no more frames (or failed: source_error)
    stopped: bool = False  # the consumer is gone: the pump stops
    source_error: list[BaseException] = field(default_factory=list)


def _pump(hand: _Hand, frames: Iterable[object]) -> None:
    source = iter(frames)
    try:
        for i, item in enumerate(source):
            frame = as_frame(item, i)  # type: ignore[arg-type]
            with hand.lock:
                while hand.pending and not hand.stopped:
                    hand.lock.wait(_POLL_S)
                if hand.stopped:
                    return
                hand.pending.append(frame)
                hand.lock.notify_all()
    except BaseException as exc:  # handed to the consumer: raised there after the answers
        hand.source_error.append(as_client_error(exc))
    finally:
        with hand.lock:
            hand.ended = True
            hand.lock.notify_all()
        close = getattr(source, "close", None)
        if close is not None and hand.stopped:
            close()  # release the camera from the thread that holds it


@dataclass
class _Entry:
    frame: Frame
    sent_at: float | None = None
    error: str | None = None  # set when the frame could not be prepared: answered here, never sent


@dataclass
class _Call:
    done: bool = False
    failure: list[BaseException] = field(default_factory=list)


class ResultStream(Iterator[FrameResult]):
    """The answers of one stream, one per frame in frame order. ``reconnects``: connections re-made."""

    def __init__(
        self,
        stub: pb_grpc.EdgeInferenceStub,
        channel: grpc.Channel,
        target: str,
        fit: Callable[[], Fit],
        frames: Iterable[object],
        options: StreamOptions,
        to_error: Callable[[grpc.RpcError], EdgeInferError] = EdgeInferError.from_rpc_error,
    ) -> None:
        """``to_error``: the library's exception for a failed call (the client's names a failed TLS handshake)."""
        self.reconnects = 0
        self._to_error = to_error
        self._stub = stub
        self._channel = channel
        self._target = target
        self._fit = fit
        self._options = options
        self._hand = _Hand()
        self._inflight: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._room = threading.Condition(self._hand.lock)  # a frame was answered: room for the next
        # The pump holds the hand-over, not this object: a stream dropped unfinished is collected,
        # and its generator's cleanup stops the pump and closes the source.
        self._pump = threading.Thread(target=_pump, args=(self._hand, frames), name="edgeinfer-frames", daemon=True)
        self._results = self._run()

    def __iter__(self) -> ResultStream:
        return self

    def __next__(self) -> FrameResult:
        return next(self._results)

    def close(self) -> None:
        """Stop early: cancel the call, stop reading the source (a camera is released)."""
        self._results.close()

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one call --------------------------------------------------------------

    def _requests(
        self, call: _Call, config: pb.StreamConfig, fit: Fit, pool: SharedMemoryFrames | None
    ) -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(config=config)
        need_pixels = self._options.encoder.encoding != "jpeg"
        try:
            while True:
                with self._hand.lock:
                    while not call.done:
                        if not self._options.drop_latest and self._sent() >= MAX_IN_FLIGHT:
                            self._room.wait(_POLL_S)
                        elif self._hand.pending or self._hand.ended:
                            break
                        else:
                            self._hand.lock.wait(_POLL_S)
                    if call.done or not self._hand.pending:
                        return  # lost (the consumer answers what was in flight), or the source ended
                    frame = self._hand.pending.popleft()
                    self._hand.lock.notify_all()
                    entry = self._inflight[frame.sequence] = _Entry(frame)  # type: ignore[index]
                # Latency counts from here: shrinking and encoding are part of it.
                entry.sent_at = time.perf_counter()
                try:
                    prepare(frame, fit, need_pixels=need_pixels)
                except MediaSourceError as exc:  # an unreadable or damaged file: its own answer, never sent
                    with self._hand.lock:  # no longer counts as out (_sent)
                        entry.error = str(exc)
                    continue
                request = pb.StreamRequest()  # filled in place: see Encoder.write
                request.frame.sequence = frame.sequence
                request.frame.capture_time_ns = frame.capture_time_ns
                if pool is None or not pool.write(frame.image, request.frame.image, bgr=frame.bgr):  # type: ignore[arg-type]
                    self._options.encoder.write(frame, request.frame.image)
                yield request
        except Exception as exc:  # gRPC would swallow it and report CANCELLED
            call.failure.append(exc)
            raise

    def _sent(self) -> int:
        """Frames in flight that went out (not the ones answered here); the hand-over's lock held."""
        return sum(1 for entry in self._inflight.values() if entry.error is None)

    def _take_answered_before(self, sequence: int | None) -> list[FrameResult]:
        """Frames answered here (prepare failed) that come before ``sequence`` (None: all that are left)."""
        out = []
        with self._hand.lock:
            while self._inflight:
                seq, entry = next(iter(self._inflight.items()))
                if seq == sequence or (entry.error is None and sequence is not None):
                    break
                del self._inflight[seq]
                out.append(_local_error(entry))
        return out

    # -- the whole stream ------------------------------------------------------

    def _run(self) -> Iterator[FrameResult]:
        o = self._options
        deadline = None if o.timeout is None else time.monotonic() + o.timeout
        self._pump.start()
        connected_once = False
        outage_since: float | None = None
        wait = _BACKOFF_S[0]
        pool: SharedMemoryFrames | None = None
        try:
            while True:
                config = pb.StreamConfig()
                config.CopyFrom(o.config)
                call_state = _Call()
                answered_any = False
                try:
                    fit = self._fit() if o.resize == "auto" else Fit()
                    if o.encoder.encoding == "shm":
                        pool = self._shm_pool(pool, fit)
                        if pool is not None:
                            config.shared_memory.CopyFrom(pool.region)
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    call = self._stub.StreamClassify(self._requests(call_state, config, fit, pool), timeout=left)
                    try:
                        for response in call:
                            if not answered_any:
                                answered_any = connected_once = True
                                if outage_since is not None:
                                    self._status(
                                        f"reconnected to {self._target} after {time.monotonic() - outage_since:.1f} s"
                                    )
                                outage_since, wait = None, _BACKOFF_S[0]
                            yield from self._take_answered_before(response.sequence)
                            if pool is not None:
                                pool.answered()
                            with self._hand.lock:
                                entry = self._inflight.pop(response.sequence, None)
                                if entry is not None and entry.error is None:
                                    self._room.notify()
                            latency = None
                            if entry is not None and entry.sent_at is not None:
                                latency = (time.perf_counter() - entry.sent_at) * 1e3
                            yield FrameResult.from_proto(response, latency)
                    finally:
                        call_state.done = True
                        call.cancel()
                except grpc.RpcError as exc:
                    if call_state.failure:
                        raise call_state.failure[0] from None
                    error = self._to_error(exc)
                    # A failed handshake is a configuration to fix (CA, certificate), not an outage to wait out.
                    if not o.reconnect or error.handshake or error.code not in RECONNECT_CODES:
                        raise error from None
                    yield from self._lose_in_flight(call_state, error, connected_once)
                    if outage_since is None:
                        outage_since = time.monotonic()
                        self.reconnects += connected_once
                        lost = f"connection to {self._target} lost ({error.reason}); reconnecting"
                        self._status(lost if connected_once else f"waiting for {self._target} ... ({error.reason})")
                    wait = yield from self._wait_for_daemon(outage_since, wait, deadline, connected_once)
                    continue
                except EdgeInferError as error:  # from GetModel
                    if not o.reconnect or error.code not in RECONNECT_CODES:
                        raise
                    if outage_since is None:
                        outage_since = time.monotonic()
                        self.reconnects += connected_once
                        self._status(f"waiting for {self._target} ... ({error.reason})")
                    wait = yield from self._wait_for_daemon(outage_since, wait, deadline, connected_once)
                    continue
                # The call ended well: every frame sent got its answer.
                yield from self._take_answered_before(None)
                with self._hand.lock:
                    more = bool(self._hand.pending) or not self._hand.ended
                if not more:
                    if self._hand.source_error:
                        raise self._hand.source_error[0]
                    return
        finally:
            with self._hand.lock:
                self._hand.stopped = True
                self._hand.lock.notify_all()
            if pool is not None:
                pool.close()

    def _shm_pool(self, old: SharedMemoryFrames | None, fit: Fit) -> SharedMemoryFrames | None:
        """A fresh shared-memory pool per call (a restarted daemon maps it anew), sized for the first frame."""
        if old is not None:
            old.close()
        with self._hand.lock:
            while not self._hand.pending and not self._hand.ended:
                self._hand.lock.wait(_POLL_S)
            first = self._hand.pending[0] if self._hand.pending else None
        if first is None or not isinstance(first.image, np.ndarray):
            return None
        image = shrink(first.image, *fit) if fit.resize_size else first.image
        return SharedMemoryFrames(max(image.nbytes, 1), self._options.shm_slots)

    def _lose_in_flight(self, call: _Call, error: EdgeInferError, connected: bool) -> Iterator[FrameResult]:
        with self._hand.lock:
            call.done = True
            lost = list(self._inflight.values())
            self._inflight.clear()
            self._room.notify_all()
        why = "lost" if connected else "not reachable"
        for entry in lost:
            if entry.error is not None:
                yield _local_error(entry)
            else:
                yield _dropped(entry.frame, f"the connection to the daemon was {why} ({error.code.name}); reconnecting")

    def _wait_for_daemon(
        self, since: float, wait: float, deadline: float | None, connected: bool
    ) -> Iterator[FrameResult]:
        """Pause ``wait`` seconds, then until gRPC has the channel connected again (it reconnects with its
        own backoff); meanwhile a ``latest`` stream answers what its source delivers as dropped. Returns
        the next pause: doubling, so that a daemon still loading (UNAVAILABLE on a ready channel) is not
        asked in a tight loop. Gives up after ``max_outage`` (``first_contact`` for a daemon never
        reached), at the stream's deadline, or when the source has ended: nothing is left to send."""
        o = self._options
        limits = [o.max_outage, None if connected else o.first_contact]
        ends = [since + s for s in limits if s is not None] + ([deadline] if deadline is not None else [])
        end = min(ends, default=None)
        pause_until = time.monotonic() + wait
        future = grpc.channel_ready_future(self._channel)
        try:
            while True:
                if end is not None and time.monotonic() >= end:
                    raise EdgeInferError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the daemon at {self._target} has been unreachable for "
                        f"{time.monotonic() - since:.0f} s; gave up",
                    )
                try:
                    future.result(timeout=_DRAIN_S)
                    ready = True
                except grpc.FutureTimeoutError:
                    ready = False
                yield from self._drop_captured()
                with self._hand.lock:
                    source_over = self._hand.ended and not self._hand.pending
                if source_over and not ready:
                    if self._hand.source_error:
                        raise self._hand.source_error[0]
                    raise EdgeInferError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the daemon at {self._target} was unreachable for {time.monotonic() - since:.0f} s, "
                        f"until the source ended; gave up",
                    )
                if ready:
                    if time.monotonic() >= pause_until:
                        return min(2 * wait, _BACKOFF_S[1])
                    time.sleep(_DRAIN_S)  # a done future answers at once: do not spin
        finally:
            future.cancel()

    def _drop_captured(self) -> Iterator[FrameResult]:
        """A ``latest`` stream answers what its source captured while the daemon was away, as dropped."""
        if not self._options.drop_latest:
            return
        with self._hand.lock:
            stale = list(self._hand.pending)
            self._hand.pending.clear()
            self._hand.lock.notify_all()
        for frame in stale:
            yield _dropped(frame, f"captured while the daemon at {self._target} was unreachable; reconnecting")

    def _status(self, message: str) -> None:
        if self._options.on_status is not None:
            self._options.on_status(message)


def _dropped(frame: Frame, reason: str) -> FrameResult:
    return FrameResult(
        sequence=int(frame.sequence or 0), capture_time_ns=int(frame.capture_time_ns or 0), dropped=reason
    )


def _local_error(entry: _Entry) -> FrameResult:
    frame = entry.frame
    return FrameResult(
        sequence=int(frame.sequence or 0),
        capture_time_ns=int(frame.capture_time_ns or 0),
        error_code=grpc.StatusCode.INVALID_ARGUMENT,
        error=entry.error or "no answer came for this frame",
    )
