"""One camera stream: drop policy, ordering, and exactly one answer per frame.

The gRPC servicer feeds frames in with :meth:`StreamSession.submit` (from a
reader thread) and sends out what :meth:`StreamSession.results` yields (from the
handler thread). In between, each frame owns a slot in an ordered queue; the
slot is filled with a prediction, a "dropped" or a frame error, and answers
leave strictly in frame order.

Drop policies (DESIGN.md):
  latest  while the model is busy keep only the newest waiting frame; the one it
          replaces is answered "dropped", and the new one takes its place in the
          model's line. Latency stays bounded when the camera is faster than the
          model.
  all     infer every frame. At most ``window`` frames are unanswered; beyond
          that :meth:`submit` blocks, the servicer stops reading, and gRPC flow
          control pushes back on the sender.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

# The answer types are the client's: one definition of what a prediction carries.
from edgeinfer.client.results import ClassScore, Timings
from edgeinfer.server.batcher import Job, JobResult
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, InternalError, InvalidRequest
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.preprocess import FrameImage

__all__ = [
    "ClassScore",
    "DropPolicy",
    "FrameIn",
    "FrameOutcome",
    "StreamSession",
    "Timings",
    "check_top_k",
    "classify_one",
]

log = logging.getLogger(__name__)

MAX_TOP_K = 1000


class DropPolicy(str, enum.Enum):
    LATEST = "latest"
    ALL = "all"


# Unanswered frames a stream may have. `latest` answers stale frames at once, so
# its window only bounds memory; `all` keeps it small so back-pressure starts early.
WINDOW = {DropPolicy.LATEST: 256, DropPolicy.ALL: 8}


@dataclass(frozen=True)
class FrameIn:
    sequence: int
    capture_time_ns: int
    image: FrameImage | EdgeInferError  # the pixels, or why the frame carries none usable


@dataclass(frozen=True)
class FrameOutcome:
    sequence: int
    capture_time_ns: int
    classes: tuple[ClassScore, ...] = ()
    timings: Timings | None = None  # queue, decode, preprocess, inference, total (ms)
    batch_size: int = 0
    dropped: str | None = None  # reason, when the frame was dropped
    error: EdgeInferError | None = None

    @property
    def kind(self) -> str:
        """ "predicted", "dropped" or "error": the one answer this frame got."""
        return "error" if self.error else "dropped" if self.dropped else "predicted"


def check_top_k(top_k: int, model: ServedModel) -> int:
    limit = min(MAX_TOP_K, model.num_classes)
    if not 1 <= top_k <= limit:
        raise InvalidRequest(f"top_k must be between 1 and {limit} for {model.name}, got {top_k}")
    return top_k


def _classes(result: JobResult, categories: list[str]) -> tuple[ClassScore, ...]:
    return tuple(ClassScore(i, categories[i], p) for i, p in zip(result.indices, result.probabilities, strict=True))


def frame_job(model: ServedModel, image: FrameImage, top_k: int) -> Job:
    """A job for one frame: preprocessed here and now, or on the inference thread (``preprocess_on``)."""
    if model.preprocess_on == "worker":
        return Job(functools.partial(model.preprocessor, image), top_k)
    return Job(model.preprocessor(image), top_k)


def classify_one(model: ServedModel, image: FrameImage, top_k: int, timeout: float | None) -> FrameOutcome:
    """One image through the same decode/preprocess/batching path as the streams."""
    received = time.perf_counter()
    check_top_k(top_k, model)
    job = model.scheduler.submit(frame_job(model, image, top_k))
    try:
        result = job.future.result(timeout)
    except TimeoutError:
        model.scheduler.cancel(job)
        raise DeadlineExceeded(f"no answer from {model.name} within the call's deadline") from None
    return _predicted(FrameIn(0, 0, image), result, model, received)


def _predicted(frame: FrameIn, result: JobResult, model: ServedModel, received: float) -> FrameOutcome:
    total = (time.perf_counter() - received) * 1e3
    timings = Timings(result.queue_ms, result.decode_ms, result.preprocess_ms, result.inference_ms, total)
    return FrameOutcome(
        frame.sequence, frame.capture_time_ns, _classes(result, model.categories), timings, result.batch_size
    )


_END = object()


class StreamSession:
    def __init__(self, model: ServedModel, *, top_k: int, policy: DropPolicy = DropPolicy.LATEST) -> None:
        self.model = model
        self.top_k = check_top_k(top_k, model)
        self.policy = policy
        # Each frame's slot (and the frame) in frame order, then _END or a stream-level error.
        self._order: queue.SimpleQueue[tuple[Future[FrameOutcome], FrameIn] | object] = queue.SimpleQueue()
        self._window = threading.BoundedSemaphore(WINDOW[policy])
        self._lock = threading.Lock()
        self._waiting: tuple[Job, Future[FrameOutcome], FrameIn] | None = None
        # The slot the handler waits on, so that abort() can wake it: its model may never
        # finish (hung, or stopped), and the handler must not wait forever.
        self._head: tuple[Future[FrameOutcome], FrameIn] | None = None
        self._aborted = threading.Event()
        self.counts = {"predicted": 0, "dropped": 0, "error": 0}

    # -- input side (reader thread) ------------------------------------------------

    def submit(self, frame: FrameIn) -> bool:
        """Queue one frame for an answer. Blocks while the window is full.

        Returns False once the session was aborted (the caller stops reading).
        """
        self._window.acquire()
        if self._aborted.is_set():
            return False
        received = time.perf_counter()
        slot: Future[FrameOutcome] = Future()
        self._order.put((slot, frame))
        if isinstance(frame.image, EdgeInferError):
            _settle(slot, self._error(frame, frame.image))
            return True
        try:
            job = frame_job(self.model, frame.image, self.top_k)
        except Exception as exc:
            _settle(slot, self._error(frame, _frame_error(exc, frame)))
            return True

        def done(fut: Future[JobResult]) -> None:
            exc = fut.exception()
            if exc is not None:
                _settle(slot, self._error(frame, _frame_error(exc, frame)))
            else:
                _settle(slot, _predicted(frame, fut.result(), self.model, received))

        job.future.add_done_callback(done)
        with self._lock:
            if self.policy is DropPolicy.LATEST and self._waiting is not None:
                old_job, old_slot, old_frame = self._waiting
                if self.model.scheduler.replace(old_job, job):  # the new frame takes its place in line
                    _settle(
                        old_slot,
                        FrameOutcome(
                            old_frame.sequence,
                            old_frame.capture_time_ns,
                            dropped="a newer frame of this stream arrived while the model was busy",
                        ),
                    )
            else:
                self.model.scheduler.submit(job)
            self._waiting = (job, slot, frame)
        return True

    def finish(self) -> None:
        """No more frames: results() ends after the last answer."""
        self._order.put(_END)

    def fail(self, exc: EdgeInferError) -> None:
        """A stream-level error: results() raises it after the answers before it."""
        self._order.put(exc)

    def abort(self) -> None:
        """The peer is gone: stop queued work, end results() and unblock the reader."""
        self._aborted.set()
        with self._lock:
            if self._waiting is not None:
                self.model.scheduler.cancel(self._waiting[0])  # never runs
        # Wake a handler waiting on a frame whose model may never finish; results() ends
        # without sending this answer (it sets the head before it checks for an abort).
        if (head := self._head) is not None:
            slot, frame = head
            _settle(slot, FrameOutcome(frame.sequence, frame.capture_time_ns, dropped="the stream closed"))
        self._order.put(_END)
        try:
            while True:
                self._window.release()
        except ValueError:  # BoundedSemaphore: released up to its size
            pass

    # -- output side (handler thread) ----------------------------------------------

    def results(self) -> Iterator[FrameOutcome]:
        while True:
            item = self._order.get()
            if item is _END or self._aborted.is_set():
                return
            if isinstance(item, EdgeInferError):
                raise item
            assert isinstance(item, tuple)
            self._head = item
            if self._aborted.is_set():  # abort() came before the head was set: nobody will wake us
                return
            outcome = item[0].result()
            if self._aborted.is_set():  # woken by abort(): the peer is gone
                return
            self.counts[outcome.kind] += 1
            with contextlib.suppress(ValueError):  # abort() already opened the window fully
                self._window.release()
            yield outcome

    @staticmethod
    def _error(frame: FrameIn, exc: EdgeInferError) -> FrameOutcome:
        return FrameOutcome(frame.sequence, frame.capture_time_ns, error=exc)


def _settle(slot: Future[FrameOutcome], outcome: FrameOutcome) -> None:
    """Answer a frame's slot, unless abort() answered it first (the first answer stands)."""
    with contextlib.suppress(InvalidStateError):
        slot.set_result(outcome)


def _frame_error(exc: BaseException, frame: FrameIn) -> EdgeInferError:
    """Our errors pass through (a bad frame's, a model failure the batcher logged); anything else is a bug: logged."""
    if isinstance(exc, EdgeInferError):
        return exc
    log.error("frame %d failed", frame.sequence, exc_info=exc)
    return InternalError(f"the daemon failed on this frame: {exc}")
