"""Small helpers every bench shares: progress lines, percentiles, samples, interleaving."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def stage(self, name: str, value: float) -> None:
        self.stages.setdefault(name, []).append(value)

    def add_timed(self, started: float) -> float:
        """One in-process frame that took from ``started`` (perf_counter) until now; its ms."""
        ms = (time.perf_counter() - started) * 1e3
        self.latencies_ms.append(ms)
        self.frames += 1
        self.seconds += ms / 1e3
        return ms

    def row(self) -> dict:
        return {
            "fps": self.fps,
            "p50_ms": pct(self.latencies_ms, 50),
            "p95_ms": pct(self.latencies_ms, 95),
            "p99_ms": pct(self.latencies_ms, 99),
            "stages_ms": {k: statistics.median(v) for k, v in self.stages.items()},
            "frames": self.frames,
        }


def rotate(items: list, by: int) -> list:
    """``items`` starting at ``by`` (mod its length): which mode goes first changes from chunk to chunk."""
    by %= len(items)
    return items[by:] + items[:by]


def interleaved(frames: int, chunk: int, items: list, offset: int = 0) -> Iterator[tuple[slice, Any]]:
    """(frames of the chunk, item) for every item on every ``chunk`` frames; the first item rotates per chunk."""
    for c, start in enumerate(range(0, frames, chunk)):
        for item in rotate(items, c + offset):
            yield slice(start, start + chunk), item


def merge(into: Samples, s: Samples) -> None:
    into.frames += s.frames
    into.seconds += s.seconds
    into.latencies_ms += s.latencies_ms
    for k, v in s.stages.items():
        into.stages.setdefault(k, []).extend(v)


def run_concurrently(one: Callable[[], None], n: int) -> float:
    """Run ``one`` in ``n`` threads at once; the seconds until all ended. A thread's exception is re-raised here."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            one()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0
