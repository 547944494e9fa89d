"""The Open Inference Protocol (KServe v2) servicer, ``inference.GRPCInferenceService``: protocol <-> domain only.

It serves the daemon's one :class:`ModelTable` on the daemon's port(s), next to
``edgeinfer.v1``, so that ``tritonclient.grpc``, KServe and any generated v2
stub reach the same models through the same batcher (tensors are read and
written by :mod:`edgeinfer.server.kserve_tensors`; a request's frames go to the
scheduler as :class:`FrameBatch`, the same jobs as a v1 frame).

Names and versions. A model is named as in ``edgeinfer.v1``: its name or any
alias (``squeezenet``, ``squeezenet1_0``); answers give the canonical name. Its
precisions are its *versions*: ``model_version="int8"`` picks the int8 variant,
``"fp32"`` the float one, ``""`` the first one loaded (as ``edgeinfer.v1``
does without a precision). ModelMetadata lists a model's versions,
RepositoryIndex has one entry per (name, version).

Beyond the core protocol: Triton's ModelStreamInfer (one answer per request,
in order, errors in-band in ``error_message``), ModelConfig, ModelStatistics,
RepositoryIndex and the classification extension. Any other method of the
service (shared memory, repository load/unload, trace, logging) answers
UNIMPLEMENTED with the list of those that are implemented.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
from grpc_interceptor.exceptions import Unimplemented

from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc
from edgeinfer.server import kserve_tensors as kt
from edgeinfer.server import metrics, statistics
from edgeinfer.server.batcher import JobResult
from edgeinfer.server.errors import EdgeInferError, InternalError, InvalidRequest, ModelNotFound, NotReady
from edgeinfer.server.frame_batch import FrameBatch
from edgeinfer.server.kserve_metadata import (
    MAX_REQUEST_BATCH,
    model_config,
    model_statistics,
    platform,
    tensor_metadata,
)
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.servicer import EdgeInferenceServicer

__all__ = [
    "EXTENSIONS",
    "IMPLEMENTED",
    "KSERVE_SERVICE_NAME",
    "MAX_REQUEST_BATCH",
    "KServeServicer",
    "add_kserve_to_server",
    "model_config",
]

log = logging.getLogger(__name__)

KSERVE_SERVICE_NAME = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
IMPLEMENTED = tuple(m.name for m in v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods)
# As Triton reports them in ServerMetadata. Not "model_repository": that one includes load/unload.
EXTENSIONS = ("classification", "model_configuration", "statistics", "parameters")
# Requests of one ModelStreamInfer in flight at once; past it the daemon stops reading and
# gRPC flow control pushes back (edgeinfer.v1's `all` policy window).
STREAM_WINDOW = 8


def _version() -> str:
    try:
        return importlib.metadata.version("edgeinfer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class KServeServicer(v2_grpc.GRPCInferenceServiceServicer):
    """Handed the model table and the ``edgeinfer.v1`` servicer, whose stream slots and draining it shares."""

    def __init__(self, table: ModelTable, edge: EdgeInferenceServicer) -> None:
        self.table = table
        self.edge = edge
        self._version = _version()

    def _resolve(self, name: str, version: str) -> ServedModel:
        if self.edge.draining:
            raise NotReady("the daemon is shutting down; reconnect to another replica or retry later")
        return self.table.resolve(name, version)

    # -- health and metadata -------------------------------------------------------

    def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.ServicerContext) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.ServicerContext) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.table.ready and not self.edge.draining)

    def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.ServicerContext) -> v2.ModelReadyResponse:
        try:
            self._resolve(request.name, request.version)
        except (ModelNotFound, NotReady):
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=True)

    def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="edgeinfer", version=self._version, extensions=EXTENSIONS)

    def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ModelMetadataResponse:
        model = self._resolve(request.name, request.version)
        versions = [model.precision] if request.version else self._versions(model)
        lead = [-1]  # the batch dimension: the config declares max_batch_size > 0
        return v2.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform=platform(model),  # pytorch_libtorch or onnxruntime_onnx: the runtime serving it
            inputs=[tensor_metadata(s, lead) for s in kt.input_specs()],
            outputs=[tensor_metadata(s, lead) for s in kt.output_specs(model.num_classes)],
        )

    def ModelConfig(self, request: v2.ModelConfigRequest, context: grpc.ServicerContext) -> v2.ModelConfigResponse:
        return v2.ModelConfigResponse(config=model_config(self._resolve(request.name, request.version)))

    def RepositoryIndex(
        self, request: v2.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> v2.RepositoryIndexResponse:
        state = "READY" if self.table.ready and not self.edge.draining else "UNAVAILABLE"
        return v2.RepositoryIndexResponse(
            models=[
                v2.RepositoryIndexResponse.ModelIndex(name=m.name, version=m.precision, state=state)
                for m in self.table.all()
            ]
        )

    def ModelStatistics(
        self, request: v2.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> v2.ModelStatisticsResponse:
        if request.name:
            model = self._resolve(request.name, request.version)
            models = [model] if request.version else [m for m in self.table.all() if m.name == model.name]
        else:
            models = self.table.all()
        return v2.ModelStatisticsResponse(model_stats=[model_statistics(m) for m in models])

    def _versions(self, model: ServedModel) -> list[str]:
        return [m.precision for m in self.table.all() if m.name == model.name]

    # -- inference ---------------------------------------------------------------

    def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.ServicerContext) -> v2.ModelInferResponse:
        model = self._resolve(request.model_name, request.model_version)
        try:
            with self.edge.unary_call_slot("ModelInfer", "ModelStreamInfer"):
                infer = _Infer.start(model, request)
                results = infer.frames.wait(_time_left(context))
        except EdgeInferError:
            statistics.record_failure(model.name, model.precision, 0.0)
            raise
        return infer.response(results)

    def ModelStreamInfer(
        self, request_iterator: Iterator[v2.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[v2.ModelStreamInferResponse]:
        if self.edge.draining:
            raise NotReady("the daemon is shutting down; reconnect to another replica or retry later")
        # One of the daemon's --max-streams slots, shared with edgeinfer.v1 streams.
        guarded = self.edge.guard.admit(context)
        stream = _Stream(self._resolve)
        try:
            context.add_callback(stream.abort)
            threading.Thread(target=stream.pump, args=(request_iterator,), name="v2-stream-reader", daemon=True).start()
            yield from stream.answers()
        finally:
            stream.abort()
            self.edge.guard.release(guarded)


@dataclass
class _Infer:
    """One ModelInferRequest whose frames are in flight: started (parsed, checked, queued), then answered."""

    request: v2.ModelInferRequest
    model: ServedModel
    outputs: list[kt.RequestedOutput]
    batched: bool
    frames: FrameBatch

    @classmethod
    def start(cls, model: ServedModel, request: v2.ModelInferRequest) -> _Infer:
        outputs = kt.requested_outputs(
            [(o.name, _parameters(o.parameters)) for o in request.outputs],
            model=model.name,
            num_classes=model.num_classes,
        )
        batch = kt.images_from_inputs(
            _inputs(request), _parameters(request.parameters), model=model.name, max_batch_size=MAX_REQUEST_BATCH
        )
        frames = FrameBatch(model, batch.images, kt.top_k_needed(outputs, model.num_classes))
        return cls(request, model, outputs, batch.batched, frames)

    def response(self, results: list[JobResult]) -> v2.ModelInferResponse:
        model, total_ms = self.model, self.frames.total_ms
        _record(model, results, total_ms)
        response = v2.ModelInferResponse(model_name=model.name, model_version=model.precision, id=self.request.id)
        for t in kt.output_tensors(self.outputs, results, labels=model.categories, batched=self.batched):
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            response.raw_output_contents.append(t.raw)
        for key, value in kt.timing_parameters(results, total_ms).items():
            if isinstance(value, int):
                response.parameters[key].int64_param = value
            else:
                response.parameters[key].double_param = value
        response.parameters["precision"].string_param = model.precision
        response.parameters["device"].string_param = str(model.device)
        return response


_END = object()


class _Stream:
    """One ModelStreamInfer: a reader thread starts requests, the handler answers them in order.

    At most STREAM_WINDOW requests are unanswered; a request's error (unknown
    model, bad tensor, undecodable image) is its answer, in-band, and the stream
    goes on.
    """

    def __init__(self, resolve: Callable[[str, str], ServedModel]) -> None:
        self._resolve = resolve
        self._order: deque[_Infer | tuple[v2.ModelInferRequest, EdgeInferError] | object] = deque()
        self._ready = threading.Condition()
        self._window = threading.BoundedSemaphore(STREAM_WINDOW)
        self._aborted = False

    def pump(self, requests: Iterator[v2.ModelInferRequest]) -> None:
        try:
            for request in requests:
                self._window.acquire()
                if self._aborted:
                    return
                self._put(self._start(request))
        except Exception:  # the RPC was cancelled or broke: nobody is left to answer
            self.abort()
            return
        self._put(_END)

    def _start(self, request: v2.ModelInferRequest) -> _Infer | tuple[v2.ModelInferRequest, EdgeInferError]:
        model = None
        try:
            model = self._resolve(request.model_name, request.model_version)
            return _Infer.start(model, request)
        except EdgeInferError as exc:
            return request, _failed(model, exc)
        except Exception as exc:  # a bug: logged, and this request is still answered
            log.exception("v2 stream request %r failed", request.id)
            return request, _failed(model, InternalError(f"the daemon failed on this request: {exc}"))

    def _put(self, item: object) -> None:
        with self._ready:
            self._order.append(item)
            self._ready.notify()

    def answers(self) -> Iterator[v2.ModelStreamInferResponse]:
        while True:
            with self._ready:
                while not self._order and not self._aborted:
                    self._ready.wait()
                if self._aborted:
                    return
                item = self._order[0]  # stays in line (abort() cancels it) until answered
            if item is _END:
                return
            response = self._answer(item)
            if self._aborted:  # woken by abort(): the peer is gone
                return
            with self._ready:
                self._order.popleft()
            with contextlib.suppress(ValueError):  # abort() already opened the window fully
                self._window.release()
            yield response

    def _answer(self, item: object) -> v2.ModelStreamInferResponse:
        if isinstance(item, tuple):
            request, error = item
            return _stream_error(request, error)
        assert isinstance(item, _Infer)
        try:
            results = item.frames.wait()
        except EdgeInferError as exc:
            return _stream_error(item.request, _failed(item.model, exc))
        return v2.ModelStreamInferResponse(infer_response=item.response(results))

    def abort(self) -> None:
        """The peer is gone: withdraw queued frames, end answers() and unblock the reader."""
        with self._ready:
            self._aborted = True
            pending = [item for item in self._order if isinstance(item, _Infer)]
            self._ready.notify_all()
        for item in pending:
            item.frames.cancel()
        with contextlib.suppress(ValueError):
            while True:
                self._window.release()


def _failed(model: ServedModel | None, exc: EdgeInferError) -> EdgeInferError:
    if model is not None:
        statistics.record_failure(model.name, model.precision, 0.0)
    return exc


def _stream_error(request: v2.ModelInferRequest, exc: EdgeInferError) -> v2.ModelStreamInferResponse:
    """Triton's in-band error: the message, and the request's id so the caller knows which one failed."""
    return v2.ModelStreamInferResponse(
        error_message=str(exc.details),
        infer_response=v2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _record(model: ServedModel, results: list[JobResult], total_ms: float) -> None:
    metrics.FRAMES.labels(model.name, model.precision, "predicted").inc(len(results))
    for r in results:
        metrics.FRAME_LATENCY.labels(model.name, model.precision).observe(total_ms / 1e3)
        statistics.record_success(model.name, model.precision, r, total_ms)


def _time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None for a call without one (gRPC reports ~9.2e18 s then)."""
    left = context.time_remaining()
    return None if left is None or left >= threading.TIMEOUT_MAX else left


def _parameters(parameters: Mapping[str, v2.InferParameter]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, p in parameters.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


def _inputs(request: v2.ModelInferRequest) -> list[kt.InputTensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input"
        )
    return [
        kt.InputTensor(
            name=t.name,
            datatype=t.datatype,
            shape=t.shape,
            raw=raw[i] if raw else None,
            bytes_contents=t.contents.bytes_contents,
            uint_contents=t.contents.uint_contents,
            parameters=_parameters(t.parameters),
        )
        for i, t in enumerate(request.inputs)
    ]


class _Unimplemented(grpc.GenericRpcHandler):
    """The service's other methods: UNIMPLEMENTED, saying what is implemented."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if service != KSERVE_SERVICE_NAME or method in IMPLEMENTED:
            return None

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            raise Unimplemented(
                f"{KSERVE_SERVICE_NAME}/{method} is not implemented by edgeinfer; it serves {', '.join(IMPLEMENTED)}"
            )

        return grpc.unary_unary_rpc_method_handler(refuse)


def add_kserve_to_server(servicer: KServeServicer, server: grpc.Server) -> None:
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_Unimplemented(),))
