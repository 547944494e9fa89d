"""Dynamic batching: an inference thread runs frames from all streams, model by model.

Inference never runs on gRPC handler threads. Each model's scheduler queues its
jobs; its next batch is ready when ``max_batch`` jobs wait or its oldest job has
waited ``max_wait_ms`` for company (Triton's max queue delay), and then runs as
one forward pass of the oldest waiting jobs. With ``max_wait_ms=0`` a lone stream
never waits. A model waiting for company does not hold its thread: other models'
ready batches run meanwhile.

Every CPU model of a daemon shares one :class:`InferenceThread` (``cpu_thread()``),
which also loads and warms them up: all of the daemon's torch work on the CPU
runs in one thread, so there is one OpenMP team. A second team (a second thread
that ever ran a parallel op) makes libgomp count more threads than cores, and
then its threads stop spinning between parallel regions and sleep at every
barrier; on this project's VM a slept vCPU is slow to come back, and int8
ResNet50 measured 1.6-2x slower in the daemon than in process (issue 4 note).
On a few cores, two models' forward passes at the same time would only fight
over them anyway. A model on CUDA gets its own thread.

Only the batch sizes in ``batch_sizes`` are run (Triton's preferred batch
sizes): a batch is cut to the largest allowed size and the rest waits for the
next pass. On the CPU some sizes are slower per frame than single frames (see
:func:`profile_batch_sizes`), and running them would make batching a loss.

A job carries its preprocessed frame, or a function that makes it; then the
worker preprocesses right before the forward pass, in the same thread and
OpenMP team as inference (see ``loading.PREPROCESS_ON``). A job that has not
started can be cancelled; that is how the ``latest`` drop policy replaces a
stale frame, which then is never decoded at all.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from edgeinfer.server.errors import InternalError
from edgeinfer.server.preprocess import PreprocessedFrame
from edgeinfer.server.runner import BatchOutput, ModelRunner

__all__ = [
    "BATCH_COST_MS",
    "BatchScheduler",
    "InferenceThread",
    "Job",
    "JobResult",
    "allowed_sizes",
    "batch_ladder",
    "cpu_thread",
    "profile_batch_sizes",
]

log = logging.getLogger(__name__)

_WAITING, _RUNNING, _CANCELLED = "waiting", "running", "cancelled"

T = TypeVar("T")

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
    Python step there is slow (a Future made, given a callback and set: 7 us warm, 45
    us right after an int8 SqueezeNet forward pass, on this project's VM). Answering
    without Futures and without an object per class (``session.FrameOutcome``) took
    the daemon's own share of the added latency from 0.53-0.97 ms to 0.27-0.80 ms,
    lower in each of six interleaved bench runs (issue 4).
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


def batch_ladder(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch``: 1, 2, 4, 8 (or 1, 2, 4, 6)."""
    return tuple(sorted({1 << i for i in range(max_batch.bit_length())} | {max_batch}))


# What a batch costs the inference thread besides its forward pass and its frames' own
# answers: cutting it and the stall while the stream threads take their turn (0.2-0.6 ms
# traced on this project's 2-vCPU VM, issue 4). A batch of N pays it once for N frames.
BATCH_COST_MS = 0.3


def profile_batch_sizes(
    runner: ModelRunner,
    crop_size: int,
    max_batch: int,
    *,
    budget_s: float = 3.0,
    batch_cost_ms: float = BATCH_COST_MS,
    min_gain: float = 0.05,
    log_as: str = "model",
) -> tuple[int, ...]:
    """Batch sizes ``min_gain`` cheaper per served frame than single frames, and no dearer than smaller sizes.

    Times powers of two up to ``max_batch``: two warm-up passes per size (TorchScript
    specializes per shape), then 3-7 rounds that alternate between the sizes, so that
    a burst of noise on this shared machine hits every size alike; each size keeps
    its fastest pass. A served frame costs its share of the pass plus its share of
    ``batch_cost_ms``. On a few CPU cores a single frame already keeps every core
    busy: some int8 kernels are much slower per frame at batch 2-4 than at 1, and
    others cost a little less per frame at 4-8, where batching wins more once
    served (int8 ResNet50: 1.1-1.3x the frames/s at 2-8 streams). ``min_gain`` keeps
    out a size that is only even within this machine's noise: it wins nothing, and
    every frame of a batch waits for the whole batch (int8 SqueezeNet allowed an
    even batch 8: one stream's backlog ran in batches of 8, with served/limit 0.81
    against 0.80-0.83 at batch 1 in the same day's runs). On a GPU batching is
    almost free. Sizes whose passes would not fit in ``budget_s`` of start-up are
    not timed and not used.
    """
    budget_ms = budget_s * 1e3
    spent_ms = 0.0
    inputs: dict[int, torch.Tensor] = {}
    pass_ms: dict[int, float] = {}  # one pass at each size, after warm-up
    for n in batch_ladder(max_batch):
        if inputs and spent_ms + 5 * n * pass_ms[1] > budget_ms:  # 2 warm-up + 3 timed passes
            break
        inputs[n] = torch.zeros(n, 3, crop_size, crop_size, dtype=runner.dtype, device=runner.device)
        for _ in range(2):
            pass_ms[n] = runner.infer(inputs[n], 1).inference_ms
            spent_ms += pass_ms[n]
    round_ms = max(sum(pass_ms.values()), 1e-3)
    rounds = max(3, min(7, int((budget_ms - spent_ms) / round_ms)))
    per_frame = {n: float("inf") for n in inputs}
    for _ in range(rounds):
        for n, x in inputs.items():
            per_frame[n] = min(per_frame[n], runner.infer(x, 1).inference_ms / n)
    served = {n: ms + batch_cost_ms / n for n, ms in per_frame.items()}
    # The scheduler always cuts the largest allowed batch, so a larger size must also be
    # no dearer per frame than the sizes below it (fp32 SqueezeNet: 4 beats 1, 8 loses to 4).
    chosen = [1]
    for n, ms in served.items():
        if n > 1 and ms <= (1 - min_gain) * served[1] and ms <= served[chosen[-1]]:
            chosen.append(n)
    log.info(
        "%s: ms per frame by batch size %s (+%.1f ms per batch when served); batching at %s",
        log_as,
        ", ".join(f"{n}: {ms:.2f}" for n, ms in per_frame.items()),
        batch_cost_ms,
        chosen,
    )
    return tuple(chosen)


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


class BatchScheduler:
    """One model's queue of jobs; its batches run on an :class:`InferenceThread`.

    ``thread``: the thread to run on (``cpu_thread()`` for CPU models); None
    gives the scheduler a dedicated one.
    """

    def __init__(
        self,
        runner: ModelRunner,
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
            inputs = torch.stack(frames) if len(frames) > 1 else frames[0][None]
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
        # forward passes rather than during the next one (freeing them before settling measured
        # int8 SqueezeNet served/limit 0.98 against 1.09 in an interleaved A/B; issue 4).

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
