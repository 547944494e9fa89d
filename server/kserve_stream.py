"""One KServe ``ModelStreamInfer`` stream on the event loop: requests read in turn, answered in order.

Triton's contract: one answer per request, in order, a request's error in-band in
``error_message`` (the stream goes on). The same clocks and budgets as an
``edgeinfer.v1`` stream (issue 26): it counts against --max-streams from the moment
it opens, its first request must come within --config-timeout, it is ended after
--idle-timeout without a request or a taken answer (the guard calls :meth:`fail` and,
if it is stuck in a send, cancels it), and it reads no further while its connection
holds its byte budget or STREAM_WINDOW requests are unanswered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.server.byte_budget import ByteBudget
from edgeinfer.server.errors import EdgeInferError, InternalError
from edgeinfer.server.fair_share import FairShare, Turns
from edgeinfer.server.front_door import read_error
from edgeinfer.server.kserve_infer import InferRequest, failed, stream_error, wait_frames
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.stream_guard import GuardedStream, StreamGuard

__all__ = ["STREAM_WINDOW", "V2Stream"]

log = logging.getLogger(__name__)

# Requests of one ModelStreamInfer in flight at once; past it the daemon stops reading and
# gRPC flow control pushes back (edgeinfer.v1's `all` policy window).
STREAM_WINDOW = 8


class V2Stream:
    def __init__(
        self,
        resolve: Callable[[str, str], ServedModel],
        decode: FairShare,
        budget: ByteBudget,
        guarded: GuardedStream,
        turns: Turns | None = None,
    ) -> None:
        self._resolve = resolve
        self._decode = decode
        self._budget = budget
        self._guarded = guarded
        self._peer = guarded.peer
        self._turns = turns or Turns()
        self._order: deque[asyncio.Task[v2.ModelStreamInferResponse]] = deque()
        self._room = asyncio.Semaphore(STREAM_WINDOW)
        self._changed = asyncio.Event()
        self._last: EdgeInferError | bool | None = None  # True: the client half-closed
        self._aborted = False
        self._reader: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        return self._aborted or self._last is not None

    async def answers(
        self, requests: AsyncIterator[v2.ModelInferRequest], guard: StreamGuard
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        first = await guard.first_message(self._guarded, anext(requests, None))
        if first is None:
            return
        assert isinstance(first, v2.ModelInferRequest)
        self._guarded.touch()
        self._guarded.session = self
        await self._room.acquire()
        self._start(first)
        del first
        self._reader = asyncio.ensure_future(self._read(requests))
        while not self._aborted:
            if self._order:
                response = await self._order[0]
                if self._aborted:
                    return
                self._order.popleft()
                self._room.release()
                yield response
                continue
            if isinstance(self._last, EdgeInferError):
                raise self._last
            if self._last:
                return
            self._changed.clear()
            await self._changed.wait()

    async def _read(self, requests: AsyncIterator[v2.ModelInferRequest]) -> None:
        try:
            while not self.ended:
                await self._room.acquire()
                await self._budget.room(self._peer)
                if self.ended:
                    return
                request = await anext(requests, None)
                if request is None:
                    self._end(True)
                    return
                self._guarded.touch()
                self._start(request)
                del request
        except EdgeInferError as exc:  # a message that is not a ModelInferRequest: after the answers before it
            self.fail(exc)
        except grpc.aio.AioRpcError as exc:  # the read failed (a message over the size limit)
            self.fail(read_error(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the RPC was cancelled or broke: nobody is left to answer
            log.debug("v2 stream from %s: reading stopped: %r", self._peer, exc)
            self.abort()

    def _start(self, request: v2.ModelInferRequest) -> None:
        self._guarded.frames_in += 1
        held = self._budget.take(self._peer, request.ByteSize())
        task = asyncio.get_running_loop().create_task(self._answer(request))
        task.add_done_callback(held.on_answered)
        self._order.append(task)
        self._changed.set()

    async def _answer(self, request: v2.ModelInferRequest) -> v2.ModelStreamInferResponse:
        model = None
        try:
            model = self._resolve(request.model_name, request.model_version)
            resolved = model
            async with self._turns.turn(self._peer):  # each request in turn with other connections' frames
                infer = await self._decode.run(self._peer, lambda: InferRequest.start(resolved, request))
                results = await wait_frames(infer.frames, None)
            return v2.ModelStreamInferResponse(infer_response=infer.response(results))
        except EdgeInferError as exc:
            return stream_error(request, failed(model, exc.with_traceback(None)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: logged, and this request is still answered
            log.error("v2 stream request %r failed: %r", request.id, exc)
            return stream_error(request, failed(model, InternalError(f"the daemon failed on this request: {exc}")))

    def _end(self, last: EdgeInferError | bool) -> None:
        if self._last is None:
            self._last = last
            self._changed.set()
            self._room.release()

    def fail(self, exc: EdgeInferError) -> None:
        """End after the answers to the requests already read, with ``exc`` as the stream's status."""
        self._end(exc.with_traceback(None))

    def abort(self) -> None:
        """The peer is gone: withdraw queued frames, end answers() and stop reading."""
        if self._aborted:
            return
        self._aborted = True
        for task in self._order:
            task.cancel()
        self._order.clear()
        if self._reader is not None:
            self._reader.cancel()
        self._changed.set()
        self._room.release()
