"""What KServe v2 says about a served model: its tensors' metadata, its Triton model config, its statistics."""

from __future__ import annotations

from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.server import kserve_tensors as kt
from edgeinfer.server import statistics
from edgeinfer.server.loading import ServedModel

__all__ = ["MAX_REQUEST_BATCH", "PLATFORM", "model_config", "model_statistics", "platform", "tensor_metadata"]

PLATFORM = "pytorch_libtorch"  # TorchScript or eager PyTorch: Triton's name for a PyTorch model
# Triton's platform and backend names for each of our runtimes
_TRITON_NAMES = {"torch": (PLATFORM, "pytorch"), "onnxruntime": ("onnxruntime_onnx", "onnxruntime")}


def platform(model: ServedModel) -> str:
    """Triton's platform name for the runtime serving ``model`` (pytorch_libtorch or onnxruntime_onnx)."""
    return _TRITON_NAMES.get(model.runtime, _TRITON_NAMES["torch"])[0]


# The most frames one request may carry: its config's max_batch_size. The frames go to the
# model's scheduler one job each, which runs them in passes of its own batch sizes (the
# config's preferred_batch_size), with other requests' and streams' frames.
MAX_REQUEST_BATCH = 16
_CONFIG_TYPES = {"BYTES": v2.TYPE_STRING, "UINT8": v2.TYPE_UINT8, "FP32": v2.TYPE_FP32}


def tensor_metadata(spec: kt.TensorSpec, lead: list[int]) -> v2.ModelMetadataResponse.TensorMetadata:
    return v2.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=[*lead, *spec.dims])


def model_config(model: ServedModel) -> v2.ModelConfig:
    """Triton's model configuration, as far as it describes a model of ours."""
    s = model.scheduler
    gpu = model.device.type == "cuda"
    config = v2.ModelConfig(
        name=model.name,
        platform=platform(model),
        backend=_TRITON_NAMES.get(model.runtime, _TRITON_NAMES["torch"])[1],
        max_batch_size=MAX_REQUEST_BATCH,
        input=[
            v2.ModelInput(
                name=spec.name,
                data_type=_CONFIG_TYPES[spec.datatype],
                format=v2.ModelInput.FORMAT_NHWC if spec.format_nhwc else v2.ModelInput.FORMAT_NONE,
                dims=spec.dims,
                optional=True,  # a request sends one of the two
            )
            for spec in kt.input_specs()
        ],
        output=[
            v2.ModelOutput(name=spec.name, data_type=_CONFIG_TYPES[spec.datatype], dims=spec.dims)
            for spec in kt.output_specs(model.num_classes)
        ],
        instance_group=[
            v2.ModelInstanceGroup(
                kind=v2.ModelInstanceGroup.KIND_GPU if gpu else v2.ModelInstanceGroup.KIND_CPU,
                count=1,
                gpus=[model.device.index or 0] if gpu else [],
            )
        ],
    )
    config.dynamic_batching.preferred_batch_size.extend(s.batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = round(s.max_wait_s * 1e6)
    facts = {
        "precision": model.precision,
        "device": str(model.device),
        "runtime": f"{model.runtime} {model.runtime_version}".strip(),
        "architecture": model.architecture,
        "weights": model.weights,
        "aliases": ",".join(model.aliases),
        "input_size": str(model.input_size),
        "pixel_order": "RGB (default) or BGR, as the input's or the request's parameter pixel_order",
    }
    if model.engine:
        facts["engine"] = model.engine
    for key, value in facts.items():
        config.parameters[key].string_value = value
    return config


def model_statistics(model: ServedModel) -> v2.ModelStatistics:
    c = statistics.snapshot(model.name, model.precision)

    def duration(count: int, ms: float) -> v2.StatisticDuration:
        return v2.StatisticDuration(count=count, ns=round(ms * 1e6))

    return v2.ModelStatistics(
        name=model.name,
        version=model.precision,
        last_inference=c.last_inference_ms,
        inference_count=c.success_count,
        execution_count=round(c.executions),
        inference_stats=v2.InferStatistics(
            success=duration(c.success_count, c.success_ms),
            fail=duration(c.fail_count, c.fail_ms),
            queue=duration(c.success_count, c.queue_ms),
            compute_input=duration(c.success_count, c.compute_input_ms),
            compute_infer=duration(c.success_count, c.compute_infer_ms),
        ),
    )
