"""Dynamic batching: one worker thread per model runs frames from all streams.

Inference never runs on gRPC handler threads. Each model has one worker that
takes the oldest waiting job, adds whatever else is already waiting (up to
``max_batch``; Triton's "preferred batch" behaviour with ``max_wait_ms`` of
patience) and runs them as one forward pass. With ``max_wait_ms=0`` a lone
stream never waits for company. A job that has not started can be cancelled;
that is how the ``latest`` drop policy replaces a stale frame.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from edgeinfer.server.runner import ModelRunner

__all__ = ["BatchScheduler", "Job", "JobResult"]

log = logging.getLogger(__name__)

_WAITING, _RUNNING, _CANCELLED = "waiting", "running", "cancelled"


@dataclass
class JobResult:
    probabilities: list[float]
    indices: list[int]
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass(eq=False)
class Job:
    tensor: torch.Tensor
    top_k: int
    future: Future[JobResult] = field(default_factory=Future)
    enqueued_at: float = 0.0
    state: str = _WAITING


class BatchScheduler:
    def __init__(
        self, runner: ModelRunner, *, max_batch: int = 8, max_wait_ms: float = 0.0, name: str = "model"
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"infer-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise RuntimeError("scheduler is stopped")
            job.enqueued_at = time.perf_counter()
            self._queue.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Withdraw a job that has not started. False if it already runs or ran."""
        with self._cond:
            if job.state != _WAITING:
                return False
            job.state = _CANCELLED
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            for job in batch:
                job.state = _RUNNING
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            started = time.perf_counter()
            try:
                k = max(job.top_k for job in batch)
                inputs = torch.stack([job.tensor for job in batch]) if len(batch) > 1 else batch[0].tensor[None]
                out = self.runner.infer(inputs, k)
            except Exception as exc:  # a model failure fails its batch, not the daemon
                log.exception("inference failed for a batch of %d", len(batch))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            probs, idx = out.probabilities.tolist(), out.indices.tolist()
            for i, job in enumerate(batch):
                job.future.set_result(
                    JobResult(
                        probabilities=probs[i][: job.top_k],
                        indices=idx[i][: job.top_k],
                        queue_ms=(started - job.enqueued_at) * 1e3,
                        inference_ms=out.inference_ms,
                        batch_size=len(batch),
                    )
                )
