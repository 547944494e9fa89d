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
import contextlib
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from edgeinfer.server.event_loop import settle_from_thread

__all__ = ["FairShare", "Turns"]

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


class Turns:
    """Frames into the models in turn per connection, so that many frames from some cannot starve another's.

    A connection may have ``share / active connections`` jobs (at least one) at the models
    at once, waiting or running; its next waits in a line of its own, and when any job is
    answered the lines are served round-robin. A lone stream still has ``share`` frames
    at the model (batching needs them); with sixteen busy connections, another stream's
    frame waits behind at most one frame of each, not behind their whole windows (a
    camera beside 15 fast senders waited 9.9 s for its answers before, bench/doors.py).
    Everything here runs on the event loop.
    """

    def __init__(self, share: int = 8) -> None:
        self.share = share
        self._at_models: Counter[str] = Counter()
        self._lines: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def at_models(self, key: str) -> int:
        return self._at_models[key]

    def waiting(self, key: str) -> int:
        return len(self._lines.get(key, ()))

    def _limit(self) -> int:
        active = len(self._at_models.keys() | self._lines.keys())
        return max(1, self.share // max(1, active))

    async def enter(self, key: str) -> None:
        """Until ``key`` may put one more job to the models (then it counts as there until :meth:`leave`)."""
        if key not in self._lines and self._at_models[key] < self._limit():
            self._at_models[key] += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines.setdefault(key, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # its turn came as it was cancelled: give it back
                self.leave(key)
            else:
                line = self._lines.get(key)
                if line is not None and turn in line:
                    line.remove(turn)
                    if not line:
                        del self._lines[key]
            raise

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """One job's turn for the block (a unary call, a KServe request)."""
        await self.enter(key)
        try:
            yield
        finally:
            self.leave(key)

    def leave(self, key: str) -> None:
        """One of ``key``'s jobs was answered (or withdrawn)."""
        self._at_models[key] -= 1
        if self._at_models[key] <= 0:
            del self._at_models[key]
        self._serve()

    def _serve(self) -> None:
        """Give turns round-robin to the lines under their share."""
        served = True
        while served and self._lines:
            served = False
            limit = self._limit()
            for key in list(self._lines):
                if self._at_models[key] >= limit:
                    continue
                line = self._lines.pop(key)
                turn = line.popleft()
                if line:
                    self._lines[key] = line  # to the back of the ring
                if turn.done():  # cancelled while it waited
                    continue
                self._at_models[key] += 1
                turn.set_result(None)
                served = True
