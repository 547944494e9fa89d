"""The daemon's one asyncio event loop, on a thread of its own, where every gRPC call is served.

gRPC Python's synchronous server gives each call a pool thread, and reads a unary
call's body on it before any interceptor runs: a client that opens calls and then
waits (health watches, silent streams, headers without a body) held every thread,
and with them the daemon (issue 26). On ``grpc.aio`` a call that waits on its client
is a suspended coroutine: it costs a few KB and no thread.

Model work never runs on this loop: batches run on the inference thread(s)
(:mod:`edgeinfer.server.inference_thread`), decoding on the daemon's decode
threads, and each hands its answer back with ``loop.call_soon_threadsafe``
(:func:`settle_from_thread`). The rest of the daemon (the command line, tests)
stays synchronous and reaches the loop through :meth:`EventLoopThread.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["EventLoopThread", "settle_from_thread"]

T = TypeVar("T")


class EventLoopThread:
    """An event loop running on a daemon thread; ``run`` hands it coroutines from any other thread."""

    def __init__(self, name: str = "grpc-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # Whatever is left (a call the drain cancelled) gets its cancellation delivered before the loop closes.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception) here."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EventLoopThread.run called from its own loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a plain function on the loop (it touches loop-only state) and return its result."""

        async def call() -> T:
            return fn()

        return self.run(call(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed in between
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def settle_from_thread(future: asyncio.Future[T], value: T | BaseException) -> None:
    """From any thread: hand ``value`` (or an exception) to a loop's future; a future already done stays as it is.

    A stream the client left, or a daemon that stopped, may have settled or dropped the
    future before its model answered: that answer is not anyone's any more.
    """

    def settle() -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
        future.get_loop().call_soon_threadsafe(settle)
