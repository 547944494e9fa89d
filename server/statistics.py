"""Per-model inference statistics since start, as Triton's statistics extension reports them.

Every answered frame counts, whichever protocol brought it (``edgeinfer.v1``
streams and Classify, KServe v2 ModelInfer and ModelStreamInfer). Kept per
(model, precision), process-wide like :mod:`edgeinfer.server.metrics`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from edgeinfer.server.batcher import JobResult

__all__ = ["ModelCounts", "record_failure", "record_success", "snapshot"]


@dataclass(slots=True)
class ModelCounts:
    success_count: int = 0
    success_ms: float = 0.0  # frame received -> answered, summed
    fail_count: int = 0
    fail_ms: float = 0.0
    queue_ms: float = 0.0
    compute_input_ms: float = 0.0  # decode + preprocess
    compute_infer_ms: float = 0.0  # the forward pass of the frame's batch
    # Each frame of a batch of n adds 1/n: the forward passes, once all of a batch's frames are counted.
    executions: float = 0.0
    last_inference_ms: int = 0  # milliseconds since the epoch


_lock = threading.Lock()
_counts: dict[tuple[str, str], ModelCounts] = {}


def _of(name: str, precision: str) -> ModelCounts:
    c = _counts.get((name, precision))
    if c is None:
        c = _counts[(name, precision)] = ModelCounts()
    return c


def record_success(name: str, precision: str, result: JobResult, total_ms: float) -> None:
    with _lock:  # updated in place: this runs once per answered frame
        c = _of(name, precision)
        c.success_count += 1
        c.success_ms += total_ms
        c.queue_ms += result.queue_ms
        c.compute_input_ms += result.decode_ms + result.preprocess_ms
        c.compute_infer_ms += result.inference_ms
        c.executions += 1 / max(1, result.batch_size)
        c.last_inference_ms = int(time.time() * 1e3)


def record_failure(name: str, precision: str, total_ms: float) -> None:
    with _lock:
        c = _of(name, precision)
        c.fail_count += 1
        c.fail_ms += total_ms


def snapshot(name: str, precision: str) -> ModelCounts:
    """A copy of the counts now (zeros for a model that answered nothing yet)."""
    with _lock:
        return replace(_counts.get((name, precision), ModelCounts()))
