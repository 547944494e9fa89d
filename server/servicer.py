"""The EdgeInference gRPC servicer: protocol <-> domain translation, nothing else.

It is handed a :class:`ModelTable` and holds no torch code. Stream-level
errors are raised as domain errors and become the RPC status in the
interceptor; per-frame errors are answered in-band by the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server import metrics, statistics
from edgeinfer.server.errors import InvalidFrame, InvalidRequest, LimitExceeded, NotLocal, NotReady
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.options import PreprocessOn
from edgeinfer.server.preprocess import FrameImage, JpegImage, RawImage
from edgeinfer.server.session import (
    DropPolicy,
    FrameIn,
    FrameOutcome,
    StreamSession,
    classify_one,
)
from edgeinfer.server.shm import SharedMemoryRegion, check_local

__all__ = ["EdgeInferenceServicer"]

log = logging.getLogger(__name__)

_POLICIES = {
    pb.DROP_POLICY_UNSPECIFIED: DropPolicy.LATEST,
    pb.DROP_POLICY_LATEST: DropPolicy.LATEST,
    pb.DROP_POLICY_ALL: DropPolicy.ALL,
}


class EdgeInferenceServicer(pb_grpc.EdgeInferenceServicer):
    def __init__(self, table: ModelTable, *, max_streams: int, max_shm_bytes: int = 256 << 20) -> None:
        self.table = table
        self.max_streams = max_streams
        self.max_shm_bytes = max_shm_bytes
        self._streams = 0
        self._streams_opened = 0
        self._lock = threading.Lock()
        self.draining = False

    # -- streams -----------------------------------------------------------------

    def StreamClassify(
        self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        first = next(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("request") != "config":
            raise InvalidRequest("the first message of a stream must be a StreamConfig (model, top_k, drop policy)")
        config = first.config
        model = self._resolve(config.model)
        session = StreamSession(model, top_k=config.top_k, policy=_POLICIES[config.drop_policy])
        region = self._shared_memory(config, context.peer()) if config.HasField("shared_memory") else None
        self.open_stream()
        try:
            context.add_callback(session.abort)
            reader = threading.Thread(
                target=_pump, args=(request_iterator, session, region), name="stream-reader", daemon=True
            )
            reader.start()
            for outcome in session.results():
                try:
                    yield _stream_response(outcome, model)
                finally:  # once gRPC has sent the answer: the metrics stay off the frame's path
                    _record(model, outcome)
        finally:
            session.abort()
            self.close_stream()
            log.info("stream on %s closed: %s", model.name, session.counts)

    def _shared_memory(self, config: pb.StreamConfig, peer: str) -> SharedMemoryRegion:
        if self.max_shm_bytes == 0:
            raise NotLocal("this daemon does not accept shared-memory frames (--max-shm-bytes 0); send image.raw")
        check_local(peer)
        shm = config.shared_memory
        return SharedMemoryRegion.open(shm.key, shm.byte_size, max_bytes=self.max_shm_bytes)

    def open_stream(self) -> None:
        """Take one of the daemon's --max-streams slots (the KServe v2 streams share them)."""
        with self._lock:
            if self._streams >= self.max_streams:
                raise LimitExceeded(
                    f"this daemon already serves {self._streams} streams (--max-streams {self.max_streams}); "
                    f"close one or start the daemon with a higher --max-streams"
                )
            self._streams += 1
            self._streams_opened += 1
            metrics.ACTIVE_STREAMS.set(self._streams)

    @property
    def open_streams(self) -> int:
        """Streams this servicer serves now (read-only; tests and fleets count with it)."""
        return self._streams

    @property
    def streams_opened(self) -> int:
        """Streams accepted since start, closed ones included."""
        return self._streams_opened

    def close_stream(self) -> None:
        with self._lock:
            self._streams -= 1
            metrics.ACTIVE_STREAMS.set(self._streams)

    # -- unary -------------------------------------------------------------------

    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.Prediction:
        model = self._resolve(request.model)
        image = image_from_proto(request.image)
        outcome = classify_one(model, image, request.top_k, timeout=_time_left(context))
        _record(model, outcome)
        return _fill_prediction(pb.Prediction(), outcome, model)

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m) for m in self.table.all()])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return model_info(self._resolve(request.model))

    def _resolve(self, selector: pb.ModelSelector) -> ServedModel:
        if self.draining:
            raise NotReady("the daemon is shutting down; reconnect to another replica or retry later")
        return self.table.resolve(selector.name, selector.precision)


def _time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None for a call without one (gRPC reports ~9.2e18 s then)."""
    left = context.time_remaining()
    return None if left is None or left >= threading.TIMEOUT_MAX else left


def _pump(requests: Iterator[pb.StreamRequest], session: StreamSession, region: SharedMemoryRegion | None) -> None:
    """Reader thread of one stream: frames in until the peer half-closes."""
    try:
        for request in requests:
            if request.WhichOneof("request") != "frame":
                session.fail(InvalidRequest("only the first message of a stream may be a StreamConfig"))
                return
            frame = request.frame
            try:
                image: FrameImage | InvalidFrame = image_from_proto(frame.image, region)
            except InvalidFrame as exc:  # answered in-band: the stream goes on
                image = exc
            if not session.submit(FrameIn(frame.sequence, frame.capture_time_ns, image)):
                return
    except Exception:  # the RPC was cancelled or broke: nobody is left to answer
        session.abort()
        return
    session.finish()


def image_from_proto(image: pb.Image, region: SharedMemoryRegion | None = None) -> FrameImage:
    """The frame's pixels as the preprocessor takes them; InvalidFrame when it has none usable."""
    kind = image.WhichOneof("data")
    if kind == "jpeg":
        return JpegImage(image.jpeg)
    if kind == "raw":
        raw = image.raw
        return RawImage(raw.height, raw.width, raw.data, bgr=raw.pixel_format == pb.PIXEL_FORMAT_BGR)
    if kind == "shared_memory":
        shm = image.shared_memory
        if region is None:
            raise InvalidFrame(
                "image.shared_memory needs a stream opened with StreamConfig.shared_memory; send image.raw"
            )
        return region.image(shm.offset, shm.height, shm.width, bgr=shm.pixel_format == pb.PIXEL_FORMAT_BGR)
    raise InvalidFrame("frame has no image: set image.jpeg, image.raw or image.shared_memory")


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
        response.error.message = outcome.error.details
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
