"""The EdgeInference gRPC servicer, on the daemon's event loop: protocol <-> domain translation, nothing else.

It is handed a :class:`ModelTable` and holds no torch code. Stream-level errors are
raised as domain errors and become the RPC status at the front door
(server/front_door.py); per-frame errors are answered in-band by the session
(server/loop_session.py). Waiting on a client or on the model is an ``await``:
no call holds a thread (issue 26).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server import metrics, statistics
from edgeinfer.server.admission import MAX_UNARY_INFER_CALLS
from edgeinfer.server.batcher import JobResult
from edgeinfer.server.byte_budget import ByteBudget, frame_bytes
from edgeinfer.server.defaults import DEFAULT_CONFIG_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S
from edgeinfer.server.errors import (
    DeadlineExceeded,
    EdgeInferError,
    InvalidFrame,
    InvalidRequest,
    NotLocal,
    NotReady,
)
from edgeinfer.server.event_loop import settle_from_thread
from edgeinfer.server.fair_share import FairShare, Turns
from edgeinfer.server.frames import FrameImage, JpegImage, RawImage
from edgeinfer.server.front_door import read_error
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.loop_session import LoopSession, make_job, predicted
from edgeinfer.server.malformed import clip_details
from edgeinfer.server.options import PreprocessOn
from edgeinfer.server.session import DropPolicy, FrameIn, FrameOutcome, check_top_k
from edgeinfer.server.shm import SharedMemoryRegion, check_local, peer_uid
from edgeinfer.server.stream_guard import GuardedStream, StreamGuard

__all__ = ["MAX_UNARY_INFER_CALLS", "EdgeInferenceServicer", "image_from_proto", "model_info", "time_left"]

log = logging.getLogger(__name__)

_PIXEL_FORMATS = frozenset(pb.PixelFormat.values())
_POLICIES = {
    pb.DROP_POLICY_UNSPECIFIED: DropPolicy.LATEST,
    pb.DROP_POLICY_LATEST: DropPolicy.LATEST,
    pb.DROP_POLICY_ALL: DropPolicy.ALL,
}
_DRAINING = "the daemon is shutting down; reconnect to another replica or retry later"


class EdgeInferenceServicer(pb_grpc.EdgeInferenceServicer):
    def __init__(
        self,
        table: ModelTable,
        *,
        max_streams: int,
        max_shm_bytes: int = 256 << 20,
        limits: FrameLimits | None = None,
        config_timeout: float = DEFAULT_CONFIG_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        decode: FairShare | None = None,
        budget: ByteBudget | None = None,
        turns: Turns | None = None,
    ) -> None:
        self.table = table
        self.max_streams = max_streams
        self.max_shm_bytes = max_shm_bytes
        self.limits = limits or FrameLimits()
        self.guard = StreamGuard(max_streams=max_streams, config_timeout=config_timeout, idle_timeout=idle_timeout)
        self.draining = False
        self.decode = decode or FairShare(1)
        self.budget = budget or ByteBudget.for_frames(self.limits.max_frame_bytes)
        self.turns = turns or Turns()

    @property
    def open_streams(self) -> int:
        """Streams open now, those still waiting for their config included."""
        return self.guard.open

    @property
    def streams_opened(self) -> int:
        """Streams admitted since start, closed ones included (fleets and tests count with it)."""
        return self.guard.opened

    # -- streams -----------------------------------------------------------------

    async def StreamClassify(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        if self.draining:
            raise NotReady(_DRAINING)
        # Counted from here, before its config: a half-open stream holds a slot too.
        stream = self.guard.admit(context)
        session: LoopSession | None = None
        region: SharedMemoryRegion | None = None
        reader: asyncio.Task[None] | None = None
        try:
            request = await self.guard.first_message(stream, anext(request_iterator, None))
            stream.touch()
            if request is None:  # the peer left, or half-closed before any message
                return
            assert isinstance(request, pb.StreamRequest)
            if request.WhichOneof("request") != "config":
                raise InvalidRequest("the first message of a stream must be a StreamConfig (model, top_k, drop policy)")
            config = request.config
            model = self._resolve(config.model)
            session = LoopSession(
                model,
                top_k=config.top_k,
                policy=_policy(config.drop_policy),
                decode=self.decode,
                connection=context.peer(),
                turns=self.turns,
            )
            if config.HasField("shared_memory"):
                region = self._shared_memory(config, context.peer())
            stream.session = session
            if self.draining:  # began after drain() had gathered the open streams
                session.fail(NotReady(_DRAINING))
            reader = asyncio.ensure_future(
                _read_frames(request_iterator, stream, session, region, model, self.limits, self.budget)
            )
            region = None  # the reader's now: it closes it when it stops reading
            async for outcome in session.answers():
                stream.sending = True
                yield _stream_response(outcome, model)
                stream.sending = False  # gRPC took the answer (the front door's write returned)
                stream.answers_out += 1
                stream.touch()
                _record(model, outcome)
        finally:
            if session is not None:
                session.abort()
                log.info("stream on %s closed: %s", session.model.name, session.counts)
            if reader is not None:
                reader.cancel()
            if region is not None:
                region.close()
            self.guard.release(stream)

    def _shared_memory(self, config: pb.StreamConfig, peer: str) -> SharedMemoryRegion:
        if self.max_shm_bytes == 0:
            raise NotLocal("this daemon does not accept shared-memory frames (--max-shm-bytes 0); send image.raw")
        check_local(peer)
        shm = config.shared_memory
        return SharedMemoryRegion.open(shm.key, shm.byte_size, max_bytes=self.max_shm_bytes, owner_uid=peer_uid(peer))

    def drain(self) -> int:
        """Shutdown (on the event loop): refuse new calls; every open stream ends after the answers to what it read."""
        self.draining = True
        return self.guard.drain(
            NotReady(
                "the daemon is shutting down: every frame it read before was answered, later ones were not read; "
                "reconnect to another replica or retry later"
            )
        )

    # -- unary -------------------------------------------------------------------

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:  # type: ignore[override]
        model = self._resolve(request.model)
        image = image_from_proto(request.image, limits=self.limits, resize_size=model.preprocessing.resize_size)
        check_top_k(request.top_k, model)
        received = time.perf_counter()
        answer: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        peer, top_k = context.peer(), request.top_k
        async with self.budget.frame(peer, frame_bytes(request.image)):
            del request  # the image (and then the job) holds the frame, until it is answered or withdrawn
            await self.turns.enter(peer)
            try:
                job = await make_job(model, image, top_k, lambda r: settle_from_thread(answer, r), self.decode, peer)
                del image
                model.scheduler.submit(job)
                try:
                    result = await asyncio.wait_for(answer, time_left(context))
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(f"no answer from {model.name} within the call's deadline") from None
                finally:
                    model.scheduler.cancel(job)  # a job that has not run (deadline, client gone) never will
            finally:
                self.turns.leave(peer)
        outcome = predicted(FrameIn(0, 0, _NO_FRAME), result, model, received)
        _record(model, outcome)
        return _fill_prediction(pb.Prediction(), outcome, model)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:  # type: ignore[override]
        return pb.ListModelsResponse(models=[model_info(m) for m in self.table.all()])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:  # type: ignore[override]
        return model_info(self._resolve(request.model))

    def _resolve(self, selector: pb.ModelSelector) -> ServedModel:
        if self.draining:
            raise NotReady(_DRAINING)
        return self.table.resolve(selector.name, selector.precision)


_NO_FRAME = InvalidFrame("no image kept")


def _policy(value: int) -> DropPolicy:
    policy = _POLICIES.get(value)
    if policy is None:
        raise InvalidRequest(f"drop_policy {value} is not a DropPolicy: 0 (unspecified: latest), 1 (latest) or 2 (all)")
    return policy


def time_left(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None for a call without one (gRPC reports ~9.2e18 s then)."""
    left = context.time_remaining()
    return None if left is None or left >= 1e9 else max(0.0, left)


async def _read_frames(
    requests: AsyncIterator[pb.StreamRequest],
    stream: GuardedStream,
    session: LoopSession,
    region: SharedMemoryRegion | None,
    model: ServedModel,
    limits: FrameLimits,
    budget: ByteBudget,
) -> None:
    """The stream's reader task: frames until the peer half-closes, each within the stream's byte budget."""
    connection = stream.peer
    try:
        while not session.ended:
            # Nothing more is read (and gRPC's flow control holds the sender) while this stream,
            # or the daemon, holds its budget of frame bytes.
            await budget.room(connection)
            request = await anext(requests, None)
            if request is None:
                session.finish()
                return
            stream.touch()
            if request.WhichOneof("request") != "frame":
                session.fail(InvalidRequest("only the first message of a stream may be a StreamConfig"))
                return
            frame = request.frame
            stream.frames_in += 1
            nbytes = frame_bytes(frame.image)
            try:  # every limit is checked here, before the frame is queued
                image: FrameImage | EdgeInferError = image_from_proto(
                    frame.image, region, limits=limits, resize_size=model.preprocessing.resize_size
                )
            except EdgeInferError as exc:  # answered in-band: the stream goes on
                image, nbytes = exc.with_traceback(None), 0
            held = budget.take(connection, nbytes)
            answer = await session.submit(FrameIn(frame.sequence, frame.capture_time_ns, image))
            del request, frame, image
            if answer is None:
                held.release()
                return
            answer.add_done_callback(held.on_answered)
    except EdgeInferError as exc:  # a message that is not a StreamRequest: answered after the frames before it
        session.fail(exc)
    except grpc.aio.AioRpcError as exc:  # the read failed (a message over the size limit)
        session.fail(read_error(exc))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the RPC was cancelled or broke: nobody is left to answer
        log.debug("stream from %s: reading stopped: %r", connection, exc)
        session.abort()
    finally:
        if region is not None:
            region.close()


def image_from_proto(
    image: pb.Image,
    region: SharedMemoryRegion | None = None,
    *,
    limits: FrameLimits | None = None,
    resize_size: int | None = None,
) -> FrameImage:
    """The frame's pixels as the preprocessor takes them; InvalidFrame when it has none usable.

    Each limit is checked from what the frame declares before anything of its size is
    allocated: a JPEG's header, a raw or shared-memory frame's fields.
    """
    limits = limits or FrameLimits()
    kind = image.WhichOneof("data")
    if kind == "jpeg":
        limits.check_jpeg(image.jpeg, resize_size)
        return JpegImage(image.jpeg)
    if kind == "raw":
        raw = image.raw
        bgr = _bgr(raw.pixel_format)
        limits.check_bytes(len(raw.data))
        limits.check_raw(raw.height, raw.width, resize_size)
        return RawImage(raw.height, raw.width, raw.data, bgr=bgr)
    if kind == "shared_memory":
        shm = image.shared_memory
        if region is None:
            raise InvalidFrame(
                "image.shared_memory needs a stream opened with StreamConfig.shared_memory; send image.raw"
            )
        bgr = _bgr(shm.pixel_format)
        limits.check_raw(shm.height, shm.width, resize_size, "shared-memory frame")
        limits.check_bytes(shm.height * shm.width * 3)  # before the copy out of the region allocates them
        return region.image(shm.offset, shm.height, shm.width, bgr=bgr)
    raise InvalidFrame("frame has no image: set image.jpeg, image.raw or image.shared_memory")


def _bgr(pixel_format: int) -> bool:
    if pixel_format not in _PIXEL_FORMATS:
        raise InvalidFrame(
            f"pixel_format {pixel_format} is not a PixelFormat: 0 (unspecified: RGB), 1 (RGB) or 2 (BGR)"
        )
    return pixel_format == pb.PIXEL_FORMAT_BGR


def _fill_prediction(out: pb.Prediction, outcome: FrameOutcome, model: ServedModel) -> pb.Prediction:
    """``out`` filled in place (a stream's answer is built inside its response: no copy).

    Written from the model's result as it came, with no objects per class in between.
    """
    r = outcome.result
    assert r is not None
    labels = outcome.labels
    for i, p in zip(r.indices, r.probabilities, strict=True):
        out.classes.add(index=i, label=labels[i], probability=p)
    timings = out.timings
    timings.queue_ms = r.queue_ms
    timings.decode_ms = r.decode_ms
    timings.preprocess_ms = r.preprocess_ms
    timings.inference_ms = r.inference_ms
    timings.total_ms = outcome.total_ms
    out.model = model.name
    out.precision = model.precision
    out.device = str(model.device)
    out.batch_size = r.batch_size
    return out


def _stream_response(outcome: FrameOutcome, model: ServedModel) -> pb.StreamResponse:
    response = pb.StreamResponse(sequence=outcome.sequence, capture_time_ns=outcome.capture_time_ns)
    if outcome.error is not None:
        response.error.code = outcome.error.status_code.value[0]
        response.error.message = clip_details(outcome.error.details)
    elif outcome.dropped is not None:
        response.dropped.reason = outcome.dropped
    else:
        _fill_prediction(response.prediction, outcome, model)
    return response


def _record(model: ServedModel, outcome: FrameOutcome) -> None:
    metrics.FRAMES.labels(model.name, model.precision, outcome.kind).inc()
    if outcome.result is not None:
        metrics.FRAME_LATENCY.labels(model.name, model.precision).observe(outcome.total_ms / 1e3)
        statistics.record_success(model.name, model.precision, outcome.result, outcome.total_ms)
    elif outcome.error is not None:
        statistics.record_failure(model.name, model.precision, outcome.total_ms)


def model_info(m: ServedModel) -> pb.ModelInfo:
    info = pb.ModelInfo(
        name=m.name,
        architecture=m.architecture,
        precision=m.precision,
        device=str(m.device),
        input_height=m.input_size,
        input_width=m.input_size,
        num_classes=m.num_classes,
        weights=m.weights,
        aliases=list(m.aliases),
        engine=m.engine,
        max_batch_size=m.scheduler.max_batch,
        batch_sizes=list(m.scheduler.batch_sizes),
        # The wire keeps its first name for the inference thread: clients compare against it.
        preprocess_on="worker" if m.preprocess_on is PreprocessOn.INFERENCE else m.preprocess_on.value,
        resize_size=m.preprocessing.resize_size,
        runtime=m.runtime,
    )
    if m.fidelity:
        info.fidelity.CopyFrom(
            pb.Fidelity(
                top1_agreement=m.fidelity["top1_agreement"],
                top5_overlap=m.fidelity["top5_overlap"],
                sqnr_db=m.fidelity["sqnr_db"],
                frames=m.fidelity["frames"],
            )
        )
    return info
