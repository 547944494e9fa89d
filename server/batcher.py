"""Dynamic batching: one model's queue of jobs, cut into batches that run on an inference thread.

Inference never runs on gRPC handler threads. Each model's scheduler queues its
jobs; its next batch is ready when ``max_batch`` jobs wait or its oldest job has
waited ``max_wait_ms`` for company (Triton's max queue delay), and then runs as
one forward pass of the oldest waiting jobs. With ``max_wait_ms=0`` a lone stream
never waits. A model waiting for company does not hold its thread: other models'
ready batches run meanwhile (:mod:`edgeinfer.server.inference_thread`).

Only the batch sizes in ``batch_sizes`` are run (Triton's preferred batch
sizes): a batch is cut to the largest allowed size and the rest waits for the
next pass. On the CPU some sizes are slower per frame than single frames, and
running them would make batching a loss (:mod:`edgeinfer.server.profiling`
measures which pay).

A job carries its preprocessed frame, or a function that makes it; then the
inference thread preprocesses right before the forward pass, in the same thread and
OpenMP team as inference (see :class:`edgeinfer.server.options.PreprocessOn`). A job that has not
started can be cancelled; that is how the ``latest`` drop policy replaces a
stale frame, which then is never decoded at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from edgeinfer.server.errors import InternalError
from edgeinfer.server.frames import PreprocessedFrame
from edgeinfer.server.inference_thread import InferenceThread
from edgeinfer.server.runtimes import BatchOutput, Runtime, stack_frames

__all__ = ["BatchScheduler", "Job", "JobResult", "allowed_sizes"]

log = logging.getLogger(__name__)

_WAITING, _RUNNING, _CANCELLED = "waiting", "running", "cancelled"

NON_FINITE = (
    "the model's scores for this frame are NaN or infinite: its activations overflowed "
    "(with fp16, serve this model in fp32: --precision fp32)"
)


@dataclass
class JobResult:
    probabilities: list[float]
    indices: list[int]
    queue_ms: float
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    batch_size: int


@dataclass(eq=False)
class Job:
    """One frame for one model: its model input, or the function that makes it on the inference thread.

    Its answer (a :class:`JobResult`, or the exception that stands for one) goes to
    ``future``; or, for a job made with ``on_done``, straight to that function, on the
    inference thread, and the job has no ``future``. The streams use ``on_done``: right
    after a forward pass the CPU's caches hold the model, not the interpreter, and each
    Python step there is slow, so a frame is answered without a Future and without an
    object per class (measured in bench/serve_bench.py; see bench/results/README.md).
    """

    frame: PreprocessedFrame | Callable[[], PreprocessedFrame]
    top_k: int
    on_done: Callable[[JobResult | BaseException], None] | None = None
    future: Future[JobResult] = field(init=False, repr=False)  # absent when on_done is given
    enqueued_at: float = 0.0  # when this job was queued: its queue_ms counts from here
    in_line_since: float = 0.0  # its place in line and batch wait; a job that replaces another keeps that one's
    state: str = _WAITING

    def __post_init__(self) -> None:
        if self.on_done is None:
            self.future = Future()

    def prepared(self) -> PreprocessedFrame:
        if not isinstance(self.frame, PreprocessedFrame):
            self.frame = self.frame()
        return self.frame

    def finish(self, answer: JobResult | BaseException) -> None:
        """Hand the job its answer; a failing ``on_done`` is logged, and the batch's other jobs still get theirs."""
        if self.on_done is not None:
            try:
                self.on_done(answer)
            except Exception:
                log.exception("answering a frame failed")
        elif isinstance(answer, BaseException):
            self.future.set_exception(answer)
        else:
            self.future.set_result(answer)


def allowed_sizes(batch_sizes: Sequence[int] | None, max_batch: int) -> tuple[int, ...]:
    """The sorted batch sizes a scheduler may run: always 1, never above ``max_batch``."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes = set(batch_sizes or range(1, max_batch + 1))
    if any(n < 1 for n in sizes):
        raise ValueError(f"batch sizes must be positive, got {sorted(sizes)}")
    return tuple(sorted({1} | {n for n in sizes if n <= max_batch}))


class BatchScheduler:
    """One model's queue of jobs; its batches run on an :class:`InferenceThread`.

    ``thread``: the thread to run on (``cpu_thread()`` for CPU models); None
    gives the scheduler a dedicated one.
    """

    def __init__(
        self,
        runner: Runtime,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 0.0,
        batch_sizes: Sequence[int] | None = None,
        name: str = "model",
        thread: InferenceThread | None = None,
    ) -> None:
        self.runner = runner
        self.name = name
        self.batch_sizes = allowed_sizes(batch_sizes, max_batch)
        self.max_batch = self.batch_sizes[-1]
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: deque[Job] = deque()
        self.thread = thread or InferenceThread(f"infer-{name}")
        self._cond = self.thread.cond
        self._stopping = False
        self.thread.attach(self)

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise RuntimeError("scheduler is stopped")
            job.enqueued_at = job.in_line_since = time.perf_counter()
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def replace(self, old: Job, new: Job) -> bool:
        """``new`` takes ``old``'s place in line if ``old`` has not started (True); else it queues at the back.

        The ``latest`` drop policy: a stream's newer frame keeps the place, and the
        batch wait, of the frame it replaces, so a stream that sends faster than
        its frames run is not sent to the back of the line (or past its batch
        wait) at every frame.
        """
        with self._cond:
            if old.state != _WAITING:
                self.submit(new)
                return False
            if self._stopping:
                raise RuntimeError("scheduler is stopped")
            old.state = _CANCELLED
            new.enqueued_at, new.in_line_since = time.perf_counter(), old.in_line_since
            self._queue[self._queue.index(old)] = new
            self._cond.notify_all()
            return True

    def cancel(self, job: Job) -> bool:
        """Withdraw a job that has not started. False if it already runs or ran."""
        with self._cond:
            if job.state != _WAITING:
                return False
            job.state = _CANCELLED
            self._queue.remove(job)  # a waiting job is always in the queue (take_batch marks what it takes)
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, let the waiting ones run (up to ``timeout``), then leave the thread."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # a batch waiting for company runs now
            while self._queue and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
        self.thread.detach(self, timeout)

    # The three below are called by the thread with its lock (``self._cond``) held.

    def oldest_waiting(self) -> float | None:
        """When the oldest waiting job was queued, or None if none waits."""
        return self._queue[0].in_line_since if self._queue else None

    def ready_at(self) -> float:
        """When the next batch may run: now if it is full or the scheduler stops, else when its wait ends.

        The wait counts from the oldest job's arrival (Triton's max queue delay), so
        a frame waits at most ``max_wait_ms`` for company, and while it does the
        thread runs other models' ready batches.
        """
        if len(self._queue) >= self.max_batch or self._stopping:
            return float("-inf")
        return self._queue[0].in_line_since + self.max_wait_s

    def take_batch(self) -> list[Job]:
        """The next batch: the oldest jobs, cut to the largest allowed size; the rest wait in order."""
        size = max(n for n in self.batch_sizes if n <= len(self._queue))
        batch = [self._queue.popleft() for _ in range(size)]
        for job in batch:
            job.state = _RUNNING
        self._cond.notify_all()  # stop() may be waiting for the queue to empty
        return batch

    def run_batch(self, batch: list[Job]) -> None:
        """Preprocess (if deferred) and infer ``batch`` on the calling (inference) thread; answer each job.

        Every job is answered, whatever fails: a model failure (or a bug in reading
        its output) answers each frame of the batch with an INTERNAL error, so no
        stream waits forever for an answer.
        """
        started = time.perf_counter()
        batch = self._prepare(batch)
        if not batch:
            return
        try:
            k = max(job.top_k for job in batch)
            frames = [job.prepared().tensor for job in batch]
            inputs = stack_frames(frames)
            out = self.runner.infer(inputs, k)
            results = self._results(batch, out, started)
        except Exception as exc:  # fails its batch, not the daemon; logged here, once
            log.exception("%s: inference failed for a batch of %d", self.name, len(batch))
            error = InternalError(f"the model failed on this frame's batch of {len(batch)}: {exc}")
            for job in batch:
                job.finish(error)
            return
        for job, result in zip(batch, results, strict=True):
            job.finish(result)
        # The batch's tensors are freed on return, after the answers: freeing a tensor lets go
        # of the GIL, and a stream thread woken by its answer then takes its turn between
        # forward passes rather than during the next one (the other order served fewer frames
        # in an interleaved A/B of bench/serve_bench.py).

    @staticmethod
    def _results(batch: list[Job], out: BatchOutput, started: float) -> list[JobResult | InternalError]:
        """One answer per job: its top-k, or an error for a frame whose scores are not finite."""
        probs, idx = out.probabilities.tolist(), out.indices.tolist()
        if len(probs) != len(batch) or len(idx) != len(batch):
            raise RuntimeError(f"the model answered {len(probs)} rows for a batch of {len(batch)}")
        results: list[JobResult | InternalError] = []
        for i, job in enumerate(batch):
            if not math.isfinite(sum(probs[i])):  # a NaN or an infinity anywhere in the row
                # An fp16 overflow on this frame (load refuses models that overflow on noise): no class.
                results.append(InternalError(NON_FINITE))
                continue
            prepared = job.prepared()
            results.append(
                JobResult(
                    probabilities=probs[i][: job.top_k],
                    indices=idx[i][: job.top_k],
                    queue_ms=(started - job.enqueued_at) * 1e3,
                    decode_ms=prepared.decode_ms,
                    preprocess_ms=prepared.preprocess_ms,
                    inference_ms=out.inference_ms,
                    batch_size=len(batch),
                )
            )
        return results

    @staticmethod
    def _prepare(batch: list[Job]) -> list[Job]:
        """Preprocess deferred frames; a frame that fails answers with its error and leaves the batch."""
        ready = []
        for job in batch:
            try:
                job.prepared()
            except Exception as exc:  # bad input (InvalidFrame...) or a bug: this frame's answer
                job.finish(exc)
                continue
            ready.append(job)
        return ready
