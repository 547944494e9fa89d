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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from edgeinfer.server.batcher import Job, JobResult
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, InternalError, InvalidRequest
from edgeinfer.server.frames import FrameImage
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.options import PreprocessOn

__all__ = [
    "DropPolicy",
    "FrameIn",
    "FrameOutcome",
    "StreamSession",
    "check_top_k",
    "classify_one",
    "frame_job",
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
    """One frame's answer. A prediction keeps the model's result as it came (no objects
    per class: they are made only when asked for, and the servicer writes the answer
    from the result directly)."""

    sequence: int
    capture_time_ns: int
    result: JobResult | None = None  # the model's answer, when the frame was predicted
    labels: Sequence[str] = field(default=(), repr=False)  # the model's class names, which result.indices index
    total_ms: float = 0.0  # in the daemon: frame received -> answered
    dropped: str | None = None  # reason, when the frame was dropped
    error: EdgeInferError | None = None

    @property
    def kind(self) -> str:
        """ "predicted", "dropped" or "error": the one answer this frame got."""
        return "error" if self.error else "dropped" if self.dropped else "predicted"

    @property
    def batch_size(self) -> int:
        return 0 if self.result is None else self.result.batch_size


def check_top_k(top_k: int, model: ServedModel) -> int:
    limit = min(MAX_TOP_K, model.num_classes)
    if not 1 <= top_k <= limit:
        raise InvalidRequest(f"top_k must be between 1 and {limit} for {model.name}, got {top_k}")
    return top_k


def frame_job(
    model: ServedModel,
    image: FrameImage,
    top_k: int,
    on_done: Callable[[JobResult | BaseException], None] | None = None,
) -> Job:
    """A job for one frame: preprocessed here and now, or on the inference thread (``preprocess_on``)."""
    if model.preprocess_on is PreprocessOn.INFERENCE:
        return Job(functools.partial(model.preprocessor, image), top_k, on_done)
    return Job(model.preprocessor(image), top_k, on_done)


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
    total_ms = (time.perf_counter() - received) * 1e3
    return FrameOutcome(frame.sequence, frame.capture_time_ns, result, model.categories, total_ms)


_END = object()
_NO_IMAGE = InvalidRequest("no image kept")  # what a frame in line holds instead of its pixels


class StreamSession:
    def __init__(self, model: ServedModel, *, top_k: int, policy: DropPolicy = DropPolicy.LATEST) -> None:
        self.model = model
        self.top_k = check_top_k(top_k, model)
        self.policy = policy
        # Each frame's slot (and its sequence and time, never its pixels: a slow reader's
        # answered frames must not keep their images) in frame order, then _END or a
        # stream-level error.
        self._order: queue.SimpleQueue[tuple[_Slot, FrameIn] | object] = queue.SimpleQueue()
        # Held while a frame or the end is put in line: nothing is queued after the end,
        # so every frame in line is answered before the stream's last word.
        self._gate = threading.Lock()
        self._ended = False
        self._window = threading.BoundedSemaphore(WINDOW[policy])
        self._lock = threading.Lock()
        self._waiting: tuple[Job, _Slot, FrameIn] | None = None
        # The slot the handler waits on, so that abort() can wake it: its model may never
        # finish (hung, or stopped), and the handler must not wait forever.
        self._head: tuple[_Slot, FrameIn] | None = None
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
        slot = _Slot()
        meta = FrameIn(frame.sequence, frame.capture_time_ns, _NO_IMAGE)  # what the answer keeps: no pixels
        with self._gate:
            if self._ended:  # the stream is ending (a drain, an error): this frame is not read
                return False
            self._order.put((slot, meta))
        if isinstance(frame.image, EdgeInferError):
            slot.settle(self._error(meta, frame.image))
            return True

        def answered(answer: JobResult | BaseException) -> None:  # on the inference thread
            if isinstance(answer, BaseException):
                slot.settle(self._error(meta, _frame_error(answer, meta)))
            else:
                slot.settle(_predicted(meta, answer, self.model, received))

        try:
            job = frame_job(self.model, frame.image, self.top_k, answered)
        except Exception as exc:
            slot.settle(self._error(meta, _frame_error(exc, meta)))
            return True
        with self._lock:
            if self.policy is DropPolicy.LATEST and self._waiting is not None:
                old_job, old_slot, old_frame = self._waiting
                if self.model.scheduler.replace(old_job, job):  # the new frame takes its place in line
                    old_slot.settle(
                        FrameOutcome(
                            old_frame.sequence,
                            old_frame.capture_time_ns,
                            dropped="a newer frame of this stream arrived while the model was busy",
                        ),
                    )
            else:
                self.model.scheduler.submit(job)
            self._waiting = (job, slot, meta)
        return True

    def finish(self) -> None:
        """No more frames: results() ends after the last answer."""
        self._end(_END)

    def fail(self, exc: EdgeInferError) -> None:
        """A stream-level error: results() raises it after the answers before it; later frames are not read."""
        self._end(exc)

    def _end(self, last: object) -> None:
        with self._gate:
            if self._ended:
                return
            self._ended = True
            self._order.put(last)

    def abort(self) -> None:
        """The peer is gone: stop queued work, end results() and unblock the reader."""
        self._aborted.set()
        with self._lock:
            if self._waiting is not None:
                self.model.scheduler.cancel(self._waiting[0])  # never runs
            # The job (and the frame it holds, up to a full raw frame if it never ran) goes with it:
            # gRPC keeps an ended call's callbacks, this session's abort() among them, for a while.
            self._waiting = None
        # Wake a handler waiting on a frame whose model may never finish; results() ends
        # without sending this answer (it sets the head before it checks for an abort).
        if (head := self._head) is not None:
            slot, frame = head
            slot.settle(FrameOutcome(frame.sequence, frame.capture_time_ns, dropped="the stream closed"))
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
            outcome = item[0].wait()
            if self._aborted.is_set():  # woken by abort(): the peer is gone
                return
            self.counts[outcome.kind] += 1
            with contextlib.suppress(ValueError):  # abort() already opened the window fully
                self._window.release()
            yield outcome

    @staticmethod
    def _error(frame: FrameIn, exc: EdgeInferError) -> FrameOutcome:
        return FrameOutcome(frame.sequence, frame.capture_time_ns, error=exc)


class _Slot:
    """One frame's answer, from the thread that settles it to the handler thread; the first answer stands.

    abort() may answer a frame whose model is still running it; the model's answer
    then comes second and is never read. A SimpleQueue rather than a Future: one
    C-level put hands the answer over and wakes the handler, with no Condition.
    """

    __slots__ = ("_answers",)

    def __init__(self) -> None:
        self._answers: queue.SimpleQueue[FrameOutcome] = queue.SimpleQueue()

    def settle(self, outcome: FrameOutcome) -> None:
        self._answers.put(outcome)

    def wait(self) -> FrameOutcome:
        return self._answers.get()


def _frame_error(exc: BaseException, frame: FrameIn) -> EdgeInferError:
    """Our errors pass through (a bad frame's, a model failure the batcher logged); anything else is a bug: logged."""
    if isinstance(exc, EdgeInferError):
        return exc
    log.error("frame %d failed", frame.sequence, exc_info=exc)
    return InternalError(f"the daemon failed on this frame: {exc}")
