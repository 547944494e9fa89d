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

import importlib.metadata
import logging
from collections.abc import AsyncIterator

import grpc
from grpc_interceptor.exceptions import Unimplemented

from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc
from edgeinfer.server import kserve_tensors as kt
from edgeinfer.server import statistics
from edgeinfer.server.errors import EdgeInferError, ModelNotFound, NotReady
from edgeinfer.server.kserve_infer import InferRequest, wait_frames
from edgeinfer.server.kserve_metadata import (
    MAX_REQUEST_BATCH,
    model_config,
    model_statistics,
    platform,
    tensor_metadata,
)
from edgeinfer.server.kserve_stream import V2Stream
from edgeinfer.server.loading import ModelTable, ServedModel
from edgeinfer.server.servicer import EdgeInferenceServicer, time_left

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

    async def ServerLive(  # type: ignore[override]
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(  # type: ignore[override]
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.table.ready and not self.edge.draining)

    async def ModelReady(  # type: ignore[override]
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        try:
            self._resolve(request.name, request.version)
        except (ModelNotFound, NotReady):
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=True)

    async def ServerMetadata(  # type: ignore[override]
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="edgeinfer", version=self._version, extensions=EXTENSIONS)

    async def ModelMetadata(  # type: ignore[override]
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
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

    async def ModelConfig(  # type: ignore[override]
        self, request: v2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelConfigResponse:
        return v2.ModelConfigResponse(config=model_config(self._resolve(request.name, request.version)))

    async def RepositoryIndex(  # type: ignore[override]
        self, request: v2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryIndexResponse:
        state = "READY" if self.table.ready and not self.edge.draining else "UNAVAILABLE"
        return v2.RepositoryIndexResponse(
            models=[
                v2.RepositoryIndexResponse.ModelIndex(name=m.name, version=m.precision, state=state)
                for m in self.table.all()
            ]
        )

    async def ModelStatistics(  # type: ignore[override]
        self, request: v2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
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

    async def ModelInfer(  # type: ignore[override]
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        model = self._resolve(request.model_name, request.model_version)
        peer = context.peer()
        try:
            async with self.edge.budget.frame(peer, request.ByteSize()), self.edge.turns.turn(peer):
                # The tensors are read (and with --preprocess-on stream, decoded) on a decode thread, in turn.
                infer = await self.edge.decode.run(peer, lambda: InferRequest.start(model, request))
                results = await wait_frames(infer.frames, time_left(context))
        except EdgeInferError as exc:
            statistics.record_failure(model.name, model.precision, 0.0)
            raise exc.with_traceback(None) from None
        return infer.response(results)

    async def ModelStreamInfer(  # type: ignore[override]
        self, request_iterator: AsyncIterator[v2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v2.ModelStreamInferResponse]:
        if self.edge.draining:
            raise NotReady("the daemon is shutting down; reconnect to another replica or retry later")
        # One of the daemon's --max-streams slots, shared with edgeinfer.v1 streams, under the same clocks.
        guarded = self.edge.guard.admit(context)
        stream = V2Stream(self._resolve, self.edge.decode, self.edge.budget, guarded, self.edge.turns)
        try:
            async for response in stream.answers(request_iterator, self.edge.guard):
                guarded.sending = True
                yield response
                guarded.sending = False
                guarded.answers_out += 1
                guarded.touch()
        finally:
            stream.abort()
            self.edge.guard.release(guarded)


class _Unimplemented(grpc.GenericRpcHandler):
    """The service's other methods: UNIMPLEMENTED, saying what is implemented."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if service != KSERVE_SERVICE_NAME or method in IMPLEMENTED:
            return None

        def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
            raise Unimplemented(
                f"{KSERVE_SERVICE_NAME}/{method} is not implemented by edgeinfer; it serves {', '.join(IMPLEMENTED)}"
            )

        return grpc.unary_unary_rpc_method_handler(refuse)


def add_kserve_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_Unimplemented(),))
