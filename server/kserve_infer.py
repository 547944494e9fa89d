"""One KServe v2 ModelInferRequest through the batcher: its tensors read and checked, its frames queued, its answer.

Used by ``ModelInfer`` and by each request of a ``ModelStreamInfer`` stream
(:mod:`edgeinfer.server.kserve_stream`). Tensors are read by
:mod:`edgeinfer.server.kserve_tensors`; the frames go to the model's scheduler as
one :class:`FrameBatch`, whose answer comes back to the event loop through a future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.server import kserve_tensors as kt
from edgeinfer.server import metrics, statistics
from edgeinfer.server.batcher import JobResult
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, InvalidRequest
from edgeinfer.server.event_loop import settle_from_thread
from edgeinfer.server.frame_batch import FrameBatch
from edgeinfer.server.kserve_metadata import MAX_REQUEST_BATCH
from edgeinfer.server.loading import ServedModel

__all__ = ["InferRequest", "failed", "stream_error", "wait_frames"]


async def wait_frames(frames: FrameBatch, timeout: float | None) -> list[JobResult]:
    """Every frame's answer, awaited on the loop; DEADLINE_EXCEEDED (frames withdrawn) after ``timeout``."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    frames.add_done_callback(lambda: settle_from_thread(done, None))
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        frames.cancel()
        raise DeadlineExceeded(f"no answer from {frames.model.name} within the call's deadline") from None
    except asyncio.CancelledError:
        frames.cancel()
        raise
    return frames.wait(0)


@dataclass
class InferRequest:
    """One ModelInferRequest whose frames are in flight: started (parsed, checked, queued), then answered."""

    request: v2.ModelInferRequest
    model: ServedModel
    outputs: list[kt.RequestedOutput]
    batched: bool
    frames: FrameBatch

    @classmethod
    def start(cls, model: ServedModel, request: v2.ModelInferRequest) -> InferRequest:
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


def failed(model: ServedModel | None, exc: EdgeInferError) -> EdgeInferError:
    if model is not None:
        statistics.record_failure(model.name, model.precision, 0.0)
    return exc


def stream_error(request: v2.ModelInferRequest, exc: EdgeInferError) -> v2.ModelStreamInferResponse:
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
