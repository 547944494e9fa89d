"""Decoding shared round-robin between connections, on a few threads off the event loop.

Frames that are decoded before the inference thread (``--preprocess-on stream``,
and every KServe request's tensors) are decoded here. Each connection has its own
line; the threads take one job from each line in turn, so a client sending
4096x3072 JPEGs in a loop waits for its own frames, not in front of everyone
else's: a connection with one frame waiting goes next after the job running now
and at most one job of each other connection (issue 26: one client's big frames
must not starve another's stream).

The result comes back to the event loop through an asyncio future
(:func:`edgeinfer.server.event_loop.settle_from_thread`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from edgeinfer.server.event_loop import settle_from_thread

__all__ = ["FairShare"]

T = TypeVar("T")


class FairShare:
    def __init__(self, threads: int = 2, name: str = "decode") -> None:
        self._lines: OrderedDict[str, deque[tuple[Callable[[], Any], asyncio.Future[Any]]]] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self.done = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()

    def waiting(self, key: str | None = None) -> int:
        with self._cond:
            if key is not None:
                return len(self._lines.get(key, ()))
            return sum(len(line) for line in self._lines.values())

    async def run(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a decode thread, in ``key``'s turn (key: the connection); its result or its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the decode threads have stopped")
            self._lines.setdefault(key, deque()).append((fn, future))
            self._cond.notify()
        return await future

    def _next(self) -> tuple[Callable[[], Any], asyncio.Future[Any]] | None:
        with self._cond:
            while not self._lines:
                if self._stopping:
                    return None
                self._cond.wait()
            key, line = self._lines.popitem(last=False)  # the connection whose turn it is
            job = line.popleft()
            if line:
                self._lines[key] = line  # its next job waits for every other connection's turn
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            fn, future = job
            if future.done():  # its caller is gone (a closed stream, a deadline)
                continue
            try:
                value: Any = fn()
            except BaseException as exc:  # the caller gets it
                value = exc
            settle_from_thread(future, value)
            del value, job, fn, future  # no frame kept alive while this thread waits
            self.done += 1

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
