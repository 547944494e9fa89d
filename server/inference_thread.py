"""The inference thread: where a model's batches (and all of its torch work) run.

Every CPU model of a daemon shares one :class:`InferenceThread` (``cpu_thread()``),
which also loads and warms them up: all of the daemon's torch work on the CPU
runs in one thread, so there is one OpenMP team. A second team (a second thread
that ever ran a parallel op) makes libgomp count more threads than cores, and
then its threads stop spinning between parallel regions and sleep at every
barrier; on a small VM a slept vCPU is slow to come back, and int8 models ran
much slower in the daemon than in process until this was so. On a few cores, two
models' forward passes at the same time would only fight over them anyway. A
model on CUDA gets its own thread.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from edgeinfer.server.batcher import BatchScheduler

__all__ = ["InferenceThread", "cpu_thread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class InferenceThread:
    """One thread that runs the batches of the schedulers attached to it, oldest waiting job first.

    ``call(fn)`` runs any function there too (loading, warm-up, profiling), so
    that every torch op of the models it serves runs in this one thread.
    ``dedicated``: the thread of one model, which ends when that model's scheduler
    leaves; the shared ``cpu_thread()`` lives as long as the process.
    """

    def __init__(self, name: str = "infer", *, dedicated: bool = True) -> None:
        self.dedicated = dedicated
        self.cond = threading.Condition()
        self._schedulers: list[BatchScheduler] = []
        self._calls: deque[Callable[[], None]] = deque()
        self._stopping = False
        self._running: BatchScheduler | None = None  # whose batch the thread runs now
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future[T] = Future()

        def settle() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # the caller gets it
                done.set_exception(exc)

        with self.cond:
            self._calls.append(settle)
            self.cond.notify_all()
        return done.result()

    def attach(self, scheduler: BatchScheduler) -> None:
        with self.cond:
            self._schedulers.append(scheduler)

    def detach(self, scheduler: BatchScheduler, timeout: float = 5.0) -> None:
        """Run no more of ``scheduler``'s batches; wait (up to ``timeout``) for the one running now to end.

        The thread is a daemon thread: if the process exited while it was still in a
        forward pass, torch would be torn down under it and the process would abort
        (SIGABRT) instead of exiting.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            if scheduler not in self._schedulers:  # stopped before
                return
            self._schedulers.remove(scheduler)
            last = not self._schedulers
            self.cond.notify_all()
            if threading.current_thread() is not self._thread:
                while self._running is scheduler and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
        if self.dedicated and last:
            self.stop(max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread once its schedulers are detached (it finishes the batch it runs)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _next(self) -> Callable[[], None] | None:
        with self.cond:
            self._running = None
            self.cond.notify_all()  # detach() may be waiting for the batch that just ended
            while True:
                if self._calls:
                    return self._calls.popleft()
                now = time.perf_counter()
                # (oldest job's place in line, when its batch may run, scheduler) of each model with jobs
                waiting = [
                    (oldest, s.ready_at(), s) for s in self._schedulers if (oldest := s.oldest_waiting()) is not None
                ]
                ready = [w for w in waiting if w[1] <= now]
                if ready:  # the model whose oldest frame has waited longest goes first
                    scheduler = min(ready, key=lambda w: w[0])[2]
                    self._running = scheduler
                    return functools.partial(scheduler.run_batch, scheduler.take_batch())
                if self._stopping and not self._schedulers:
                    return None
                # Nothing ready: sleep until a model's batch wait ends, or a job or a call comes.
                wake_at = min((at for _, at, _ in waiting), default=None)
                self.cond.wait(None if wake_at is None else wake_at - now)

    def _run(self) -> None:
        while (work := self._next()) is not None:
            try:
                work()
            except Exception:  # a bug in one batch must not take every model down
                log.exception("inference thread: unexpected error")


_cpu_thread: InferenceThread | None = None
_cpu_thread_lock = threading.Lock()


def cpu_thread() -> InferenceThread:
    """The process's one thread for CPU inference (created on first use)."""
    global _cpu_thread
    with _cpu_thread_lock:
        if _cpu_thread is None:
            _cpu_thread = InferenceThread("infer-cpu", dedicated=False)
        return _cpu_thread
