"""Several frames of one request through the batcher: submitted together, answered once all are in.

A KServe v2 request may carry a batch of images. Each becomes one job of the
model's scheduler, exactly like an ``edgeinfer.v1`` frame (``session.frame_job``),
so they batch with each other and with every other stream's frames. Jobs are
answered through ``on_done`` on the inference thread (no Future per frame, see
``batcher.Job``); the caller waits once for the whole request.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence

from grpc_interceptor.exceptions import Cancelled

from edgeinfer.server.batcher import JobResult
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, InternalError
from edgeinfer.server.frames import FrameImage
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.session import check_top_k, frame_job

__all__ = ["FrameBatch"]


class FrameBatch:
    """The frames of one request, in flight. Preprocessing on the caller's thread (``preprocess_on="stream"``)
    happens here, so a bad frame raises before anything is queued."""

    def __init__(self, model: ServedModel, images: Sequence[FrameImage], top_k: int) -> None:
        self.received = time.perf_counter()
        self.model = model
        check_top_k(top_k, model)
        self._results: list[JobResult | None] = [None] * len(images)
        self._error: BaseException | None = None
        self._left = len(images)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self.total_ms = 0.0
        jobs = [frame_job(model, image, top_k, functools.partial(self._answered, i)) for i, image in enumerate(images)]
        self._jobs = [model.scheduler.submit(job) for job in jobs]

    def _answered(self, index: int, answer: JobResult | BaseException) -> None:  # on the inference thread
        callbacks: list[Callable[[], None]] = []
        with self._lock:
            if isinstance(answer, BaseException):
                self._error = self._error or answer
            else:
                self._results[index] = answer
            self._left -= 1
            if (self._left == 0 or self._error is not None) and not self._done.is_set():
                self.total_ms = (time.perf_counter() - self.received) * 1e3
                self._done.set()
                callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (on the thread that answers the last frame, or here) once :meth:`wait` would not block."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def cancel(self) -> None:
        """Withdraw the frames not started yet and wake :meth:`wait` (the caller is gone)."""
        self._cancelled = True
        for job in self._jobs:
            self.model.scheduler.cancel(job)
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Every frame's answer, in order; the first frame error raised instead (the rest withdrawn)."""
        if not self._done.wait(timeout):
            self.cancel()
            raise DeadlineExceeded(f"no answer from {self.model.name} within the call's deadline")
        if self._cancelled and self._error is None and self._left:
            raise Cancelled("the request was cancelled before all its frames were answered")
        if self._error is not None:
            for job in self._jobs:
                self.model.scheduler.cancel(job)
            if isinstance(self._error, EdgeInferError):
                raise self._error
            raise InternalError(f"the daemon failed on this request: {self._error}") from self._error
        return [r for r in self._results if r is not None]
