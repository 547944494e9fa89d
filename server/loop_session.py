"""One ``edgeinfer.v1`` stream on the event loop: drop policy, order, and exactly one answer per frame.

The same contract as :class:`edgeinfer.server.session.StreamSession` (which the
synchronous API keeps), with the waits made awaitable: the stream's reader task
``submit``s frames, its handler iterates ``answers()``, and each frame's answer
comes from the inference thread into an asyncio future
(:func:`settle_from_thread`): nothing here blocks a thread while it waits.

Drop policies (DESIGN.md): ``latest`` keeps only the newest waiting frame, the one it
replaces is answered "dropped"; ``all`` infers every frame, with at most ``WINDOW``
unanswered, after which the reader stops reading and gRPC's flow control pushes back.
Frames are also held to a byte budget (:mod:`edgeinfer.server.byte_budget`), released
when each frame is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from edgeinfer.server.batcher import Job, JobResult
from edgeinfer.server.errors import EdgeInferError, InternalError, InvalidRequest
from edgeinfer.server.event_loop import settle_from_thread
from edgeinfer.server.fair_share import FairShare, Turns
from edgeinfer.server.frames import FrameImage
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.options import PreprocessOn
from edgeinfer.server.session import WINDOW, DropPolicy, FrameIn, FrameOutcome, check_top_k, frame_job

__all__ = ["LoopSession", "frame_error", "make_job", "predicted"]

log = logging.getLogger(__name__)

_END = object()
_NO_IMAGE = InvalidRequest("no image kept")  # what a frame in line holds instead of its pixels


async def make_job(
    model: ServedModel,
    image: FrameImage,
    top_k: int,
    on_done: Callable[[JobResult | BaseException], None],
    decode: FairShare,
    connection: str,
) -> Job:
    """A frame's job: preprocessing deferred to the inference thread, or done now on a decode thread in turn."""
    if model.preprocess_on is PreprocessOn.INFERENCE:
        return frame_job(model, image, top_k, on_done)
    return await decode.run(connection, lambda: frame_job(model, image, top_k, on_done))


def predicted(frame: FrameIn, result: JobResult, model: ServedModel, received: float) -> FrameOutcome:
    total_ms = (time.perf_counter() - received) * 1e3
    return FrameOutcome(frame.sequence, frame.capture_time_ns, result, model.categories, total_ms)


def frame_error(exc: BaseException, sequence: int) -> EdgeInferError:
    """Our errors pass through (without their traceback: it holds the frame); anything else is a bug: logged."""
    if isinstance(exc, EdgeInferError):
        return exc.with_traceback(None)
    log.error("frame %d failed: %r", sequence, exc)
    return InternalError(f"the daemon failed on this frame: {exc}")


class LoopSession:
    def __init__(
        self,
        model: ServedModel,
        *,
        top_k: int,
        policy: DropPolicy,
        decode: FairShare,
        connection: str,
        turns: Turns | None = None,
    ) -> None:
        self.model = model
        # `all` frames take turns with other connections' at the models; `latest` keeps one waiting anyway.
        self._turns = turns if policy is DropPolicy.ALL else None
        self.top_k = check_top_k(top_k, model)
        self.policy = policy
        self._decode = decode
        self._connection = connection
        # Each frame's answer-to-be and its sequence and time (never its pixels), in frame order.
        self._order: deque[tuple[asyncio.Future[FrameOutcome], FrameIn]] = deque()
        self._changed = asyncio.Event()
        self._last: object | None = None  # _END or the stream's error, after the answers in line
        self._room = asyncio.Semaphore(WINDOW[policy])
        self._waiting: tuple[Job, asyncio.Future[FrameOutcome], FrameIn] | None = None
        self._aborted = False
        self.counts = {"predicted": 0, "dropped": 0, "error": 0}

    @property
    def ended(self) -> bool:
        """No more frames are taken: finished, failed or aborted."""
        return self._aborted or self._last is not None

    # -- input side (the stream's reader task) ------------------------------------------

    async def submit(self, frame: FrameIn) -> asyncio.Future[FrameOutcome] | None:
        """Queue one frame for an answer (waits while the window is full); its answer's future.

        None once the stream has ended (the reader stops reading).
        """
        await self._room.acquire()
        if self.ended:
            return None
        received = time.perf_counter()
        meta = FrameIn(frame.sequence, frame.capture_time_ns, _NO_IMAGE)
        answer: asyncio.Future[FrameOutcome] = asyncio.get_running_loop().create_future()
        self._order.append((answer, meta))
        self._changed.set()
        if isinstance(frame.image, EdgeInferError):
            answer.set_result(FrameOutcome(meta.sequence, meta.capture_time_ns, error=frame.image))
            return answer
        model = self.model
        if self._turns is not None:
            turns, connection = self._turns, self._connection
            await turns.enter(connection)
            answer.add_done_callback(lambda _: turns.leave(connection))
            if answer.done():  # aborted while it waited for its turn
                return answer

        def answered(result: JobResult | BaseException) -> None:  # on the inference thread
            if isinstance(result, BaseException):
                outcome = FrameOutcome(meta.sequence, meta.capture_time_ns, error=frame_error(result, meta.sequence))
            else:
                outcome = predicted(meta, result, model, received)
            settle_from_thread(answer, outcome)

        try:
            job = await make_job(model, frame.image, self.top_k, answered, self._decode, self._connection)
        except Exception as exc:  # this frame's answer
            if not answer.done():
                answer.set_result(
                    FrameOutcome(meta.sequence, meta.capture_time_ns, error=frame_error(exc, meta.sequence))
                )
            return answer
        if answer.done():  # aborted while it was decoded
            return answer
        waiting = self._waiting
        if self.policy is DropPolicy.LATEST and waiting is not None:
            old_job, old_answer, old_frame = waiting
            if model.scheduler.replace(old_job, job) and not old_answer.done():  # the new frame takes its place
                old_answer.set_result(
                    FrameOutcome(
                        old_frame.sequence,
                        old_frame.capture_time_ns,
                        dropped="a newer frame of this stream arrived while the model was busy",
                    )
                )
        else:
            model.scheduler.submit(job)
        self._waiting = (job, answer, meta)
        return answer

    def finish(self) -> None:
        """No more frames: answers() ends after the last answer."""
        self._end(_END)

    def fail(self, exc: EdgeInferError) -> None:
        """A stream-level error: answers() raises it after the answers before it; later frames are not read."""
        self._end(exc.with_traceback(None))

    def _end(self, last: object) -> None:
        if self._last is None:
            self._last = last
            self._changed.set()
            self._room.release()  # a reader waiting for room sees the end

    def abort(self) -> None:
        """The peer is gone: withdraw queued work, end answers() and wake the reader."""
        if self._aborted:
            return
        self._aborted = True
        if self._waiting is not None:
            self.model.scheduler.cancel(self._waiting[0])  # never runs, and lets go of its frame
            self._waiting = None
        for answer, meta in self._order:
            if not answer.done():
                answer.set_result(FrameOutcome(meta.sequence, meta.capture_time_ns, dropped="the stream closed"))
        self._order.clear()
        self._changed.set()
        self._room.release()

    # -- output side (the handler) --------------------------------------------------------

    async def answers(self) -> AsyncIterator[FrameOutcome]:
        while not self._aborted:
            if self._order:
                answer, _ = self._order[0]
                outcome = await answer
                if self._aborted:
                    return
                self._order.popleft()
                if self._waiting is not None and self._waiting[1] is answer:
                    self._waiting = None
                self.counts[outcome.kind] += 1
                self._room.release()
                yield outcome
                continue
            if self._last is not None:
                if isinstance(self._last, EdgeInferError):
                    raise self._last
                return
            self._changed.clear()
            await self._changed.wait()
