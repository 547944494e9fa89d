"""Frame bytes held in the daemon, bounded per connection and in all, and reserved before they are read on.

A frame's bytes are held from the moment its message is read until it is answered:
in the message, in the job that waits for the model, in the decoded image. Before a
stream reads its next message, it waits until its connection holds less than
``per_stream`` bytes (four frames at --max-frame-bytes) and the daemon less than
``total`` (256 MiB); while it waits, nothing is read, and gRPC's HTTP/2 flow control
stops the sender after a window of bytes (server/app.py turns off the window's
growth, so that the bytes gRPC reads ahead stay small too). So fifteen fast senders
hold at most their budgets, not gigabytes (issue 26).

At most one frame over the budget is held per connection: the one read while
there was room. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["FRAMES_PER_STREAM", "TOTAL_BYTES", "ByteBudget", "Held", "frame_bytes"]

FRAMES_PER_STREAM = 4  # frames of --max-frame-bytes one connection may hold unanswered
TOTAL_BYTES = 256 << 20  # frame bytes the whole daemon may hold unanswered


def frame_bytes(image: Any) -> int:
    """The bytes an ``edgeinfer.v1`` Image brings into the daemon's memory (a shared-memory frame's are copied)."""
    kind = image.WhichOneof("data")
    if kind == "jpeg":
        return len(image.jpeg)
    if kind == "raw":
        return len(image.raw.data)
    if kind == "shared_memory":
        return image.shared_memory.height * image.shared_memory.width * 3
    return 0


class Held:
    """Bytes one frame holds; released once, when it is answered (or will never be)."""

    __slots__ = ("_budget", "key", "n")

    def __init__(self, budget: ByteBudget, key: str, n: int) -> None:
        self._budget: ByteBudget | None = budget
        self.key = key
        self.n = n

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self)

    def on_answered(self, _: object) -> None:  # an asyncio future's done-callback
        self.release()


class ByteBudget:
    def __init__(self, per_stream: int, total: int = TOTAL_BYTES) -> None:
        self.per_stream = per_stream
        self.total = max(total, per_stream)
        self.held = 0
        self.peak = 0
        self._by_key: Counter[str] = Counter()
        self._freed: asyncio.Event | None = None

    @classmethod
    def for_frames(cls, max_frame_bytes: int, total: int = TOTAL_BYTES) -> ByteBudget:
        return cls(FRAMES_PER_STREAM * max_frame_bytes, total)

    def holding(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def has_room(self, key: str) -> bool:
        return self._by_key.get(key, 0) < self.per_stream and self.held < self.total

    async def room(self, key: str) -> None:
        """Until ``key`` (a connection) and the daemon both hold less than their budgets."""
        while not self.has_room(key):
            if self._freed is None:
                self._freed = asyncio.Event()
            await self._freed.wait()

    def take(self, key: str, n: int) -> Held:
        """Count ``n`` bytes as held by ``key`` (after :meth:`room`; a frame read is always counted)."""
        self.held += n
        self._by_key[key] += n
        self.peak = max(self.peak, self.held)
        return Held(self, key, n)

    @contextlib.asynccontextmanager
    async def frame(self, key: str, n: int) -> AsyncIterator[Held]:
        """Room, then ``n`` bytes held for the block (a unary call's frame)."""
        await self.room(key)
        held = self.take(key, n)
        try:
            yield held
        finally:
            held.release()

    def _give_back(self, held: Held) -> None:
        self.held -= held.n
        self._by_key[held.key] -= held.n
        if self._by_key[held.key] <= 0:
            del self._by_key[held.key]
        if self._freed is not None:
            self._freed.set()
            self._freed = None
