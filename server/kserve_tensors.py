"""Open Inference Protocol (KServe v2) tensors <-> the daemon's frames and answers, without gRPC.

A classifier served over v2 has two inputs, of which a request sends one:

  IMAGE   BYTES, one encoded image (JPEG) per batch item: shape [N, 1] (or [N]).
  PIXELS  UINT8 interleaved pixels: [H, W, 3] for one frame, or [N, H, W, 3]
          when the model batches (its config's max_batch_size > 0). Pixel order
          is the input's (or the request's) parameter ``pixel_order``: "RGB"
          (default) or "BGR" (OpenCV's).

and one output:

  PROBABILITIES  FP32 [N, classes] (or [classes] for an unbatched PIXELS frame),
          the softmax in class-index order. Asked for with the parameter
          ``classification`` (tritonclient's ``class_count``) = k it is instead
          BYTES [N, k] of ``"score:index:label"``, best first, as Triton's
          classification extension answers.

Bad tensors raise the same domain errors as ``edgeinfer.v1`` frames
(:class:`InvalidRequest`, :class:`InvalidFrame`); the frames themselves are
decoded and limited by :mod:`edgeinfer.server.preprocess`, as every frame is.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeinfer.server.batcher import JobResult
from edgeinfer.server.errors import InvalidFrame, InvalidRequest
from edgeinfer.server.frames import FrameImage, JpegImage, RawImage

__all__ = [
    "CLASSIFICATION",
    "IMAGE",
    "PIXELS",
    "PIXEL_ORDER",
    "PROBABILITIES",
    "ImageBatch",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "TensorSpec",
    "deserialize_bytes",
    "images_from_inputs",
    "input_specs",
    "output_specs",
    "output_tensors",
    "requested_outputs",
    "serialize_bytes",
    "timing_parameters",
    "top_k_needed",
]

IMAGE = "IMAGE"
PIXELS = "PIXELS"
PROBABILITIES = "PROBABILITIES"
PIXEL_ORDER = "pixel_order"
CLASSIFICATION = "classification"  # Triton's parameter name; tritonclient's class_count sets it
_CLASS_COUNT_KEYS = (CLASSIFICATION, "class_count")
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix, little-endian


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model's metadata and config describe it (dims without the batch)."""

    name: str
    datatype: str  # the protocol's name: BYTES, UINT8, FP32
    dims: tuple[int, ...]  # -1: any size
    format_nhwc: bool = False


def input_specs() -> list[TensorSpec]:
    return [TensorSpec(IMAGE, "BYTES", (1,)), TensorSpec(PIXELS, "UINT8", (-1, -1, 3), format_nhwc=True)]


def output_specs(num_classes: int) -> list[TensorSpec]:
    return [TensorSpec(PROBABILITIES, "FP32", (num_classes,))]


@dataclass(frozen=True)
class InputTensor:
    """One request input: its data from raw_input_contents (``raw``) or from its typed contents."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | None = None
    bytes_contents: Sequence[bytes] = ()
    uint_contents: Sequence[int] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageBatch:
    images: list[FrameImage]
    batched: bool  # the request had a batch dimension: outputs get one too


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    class_count: int = 0  # > 0: the classification extension


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes


def images_from_inputs(
    inputs: Sequence[InputTensor],
    request_parameters: Mapping[str, object],
    *,
    model: str,
    max_batch_size: int,
) -> ImageBatch:
    """The frames one request carries. ``max_batch_size`` is the config's (0: the model does not batch)."""
    names = [t.name for t in inputs]
    if not inputs:
        raise InvalidRequest(
            f"the request has no input: send {IMAGE} (BYTES, one JPEG per batch item) or {PIXELS} (UINT8 [N,H,W,3])"
        )
    for name in names:
        if name not in (IMAGE, PIXELS):
            raise InvalidRequest(
                f"unknown input {name!r} for {model}; its inputs are {IMAGE} (BYTES) and {PIXELS} (UINT8)"
            )
    if len(inputs) > 1:
        raise InvalidRequest(f"send one input, {IMAGE} or {PIXELS}, not {len(inputs)} ({', '.join(names)})")
    tensor = inputs[0]
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"input {tensor.name} has a negative dimension in its shape {shape}")
    limit = max(1, max_batch_size)

    def check_count(count: int) -> None:  # from the shape, before the data is read
        if count > limit:
            raise InvalidRequest(f"a batch of {count} is over {model}'s max_batch_size of {limit}; split the request")
        if count == 0:
            raise InvalidRequest(f"input {tensor.name} of shape {shape} holds no image")

    if tensor.name == IMAGE:
        return _encoded_images(tensor, shape, max_batch_size, check_count)
    bgr = _pixel_order(tensor.parameters, request_parameters)
    return _pixel_frames(tensor, shape, bgr, check_count)


def _check_datatype(tensor: InputTensor, expected: str) -> None:
    if tensor.datatype != expected:
        raise InvalidRequest(f"input {tensor.name} must be {expected}, got {tensor.datatype or 'no datatype'}")


def _encoded_images(
    tensor: InputTensor, shape: list[int], max_batch_size: int, check_count: Callable[[int], None]
) -> ImageBatch:
    _check_datatype(tensor, "BYTES")
    if len(shape) == 2 and shape[1] == 1:
        batched = True
    elif len(shape) == 1:
        batched = max_batch_size > 0
    else:
        raise InvalidRequest(f"input {IMAGE} must have shape [N, 1] or [N] (one encoded image each), got {shape}")
    count = shape[0]
    check_count(count)
    if tensor.raw is not None:
        elements = deserialize_bytes(tensor.raw, count, name=IMAGE)
    elif tensor.bytes_contents:
        elements = list(tensor.bytes_contents)
        if len(elements) != count:
            raise InvalidRequest(f"input {IMAGE} of shape {shape} holds {len(elements)} elements, not {count}")
    else:
        raise InvalidRequest(f"input {IMAGE} has no data: put it in raw_input_contents or contents.bytes_contents")
    return ImageBatch([JpegImage(bytes(e)) for e in elements], batched)


def _pixel_frames(tensor: InputTensor, shape: list[int], bgr: bool, check_count: Callable[[int], None]) -> ImageBatch:
    _check_datatype(tensor, "UINT8")
    if len(shape) == 3 and shape[2] == 3:
        count, (height, width) = 1, shape[:2]
        batched = False
    elif len(shape) == 4 and shape[3] == 3:
        count, height, width = shape[:3]
        batched = True
    else:
        raise InvalidRequest(
            f"input {PIXELS} must have shape [H, W, 3] or [N, H, W, 3] (interleaved uint8 pixels), got {shape}"
        )
    check_count(count)
    if height == 0 or width == 0:
        raise InvalidFrame(f"input {PIXELS} must have a height and a width, got {height}x{width}")
    frame_bytes = height * width * 3
    needed = count * frame_bytes
    if tensor.raw is not None:
        data: bytes | memoryview = tensor.raw
    elif tensor.uint_contents:
        if len(tensor.uint_contents) != needed:  # checked before any copy of the values
            got = len(tensor.uint_contents)
            raise InvalidFrame(f"input {PIXELS} of shape {shape} needs {needed} values, got {got}")
        values = np.asarray(tensor.uint_contents, dtype=np.uint32)
        if values.max() > 255:
            raise InvalidFrame(f"input {PIXELS} holds values over 255; UINT8 pixels are 0-255")
        data = values.astype(np.uint8).tobytes()
    else:
        raise InvalidRequest(f"input {PIXELS} has no data: put it in raw_input_contents or contents.uint_contents")
    if len(data) != needed:
        raise InvalidFrame(
            f"input {PIXELS} of shape {shape} needs {needed} bytes of uint8 pixels, got {len(data)}; "
            f"send N*H*W*3 interleaved bytes"
        )
    view = memoryview(data)  # each frame a slice of the message's bytes, no copy
    images: list[FrameImage] = [
        RawImage(height, width, view[i * frame_bytes : (i + 1) * frame_bytes], bgr=bgr) for i in range(count)
    ]
    return ImageBatch(images, batched)


def _pixel_order(*parameter_sets: Mapping[str, object]) -> bool:
    """True for BGR. The input's parameter wins over the request's."""
    for parameters in parameter_sets:
        if PIXEL_ORDER in parameters:
            value = parameters[PIXEL_ORDER]
            order = value.upper() if isinstance(value, str) else value
            if order not in ("RGB", "BGR"):
                raise InvalidRequest(f"parameter {PIXEL_ORDER} must be 'RGB' or 'BGR', got {value!r}")
            return order == "BGR"
    return False


def deserialize_bytes(raw: bytes, count: int, *, name: str) -> list[memoryview]:
    """A BYTES tensor's elements from its raw form: each a 4-byte little-endian length, then the bytes."""
    view = memoryview(raw)
    elements = []
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidRequest(f"input {name}'s data ends before element {i} of {count} (truncated BYTES tensor)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(
                f"input {name}'s element {i} declares {length} bytes, only {len(view) - offset} follow"
            )
        elements.append(view[offset : offset + length])
        offset += length
    if offset != len(view):
        extra = len(view) - offset
        raise InvalidRequest(f"input {name} holds {extra} bytes past its {count} elements; check its shape")
    return elements


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def requested_outputs(
    outputs: Sequence[tuple[str, Mapping[str, object]]], *, model: str, num_classes: int
) -> list[RequestedOutput]:
    """The outputs a request asks for (name, parameters); none asked: the probabilities."""
    if not outputs:
        return [RequestedOutput(PROBABILITIES)]
    chosen = []
    for name, parameters in outputs:
        if name != PROBABILITIES:
            raise InvalidRequest(f"unknown output {name!r} for {model}; its output is {PROBABILITIES}")
        count = 0
        for key in _CLASS_COUNT_KEYS:
            if key in parameters:
                value = parameters[key]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidRequest(f"output parameter {key} must be an integer class count, got {value!r}")
                count = value
                if not 1 <= count <= num_classes:
                    raise InvalidRequest(f"{key} must be between 1 and {num_classes} for {model}, got {count}")
        chosen.append(RequestedOutput(name, count))
    if len(chosen) > 1:
        raise InvalidRequest(f"output {PROBABILITIES} is asked for {len(chosen)} times; ask once")
    return chosen


def top_k_needed(outputs: Sequence[RequestedOutput], num_classes: int) -> int:
    """How many classes each frame's answer must carry: all of them for the probabilities tensor."""
    return max(num_classes if o.class_count == 0 else o.class_count for o in outputs)


def output_tensors(
    outputs: Sequence[RequestedOutput],
    results: Sequence[JobResult],
    *,
    labels: Sequence[str],
    batched: bool,
) -> list[OutputTensor]:
    num_classes = len(labels)
    lead = [len(results)] if batched else []
    tensors = []
    for out in outputs:
        if out.class_count:
            k = out.class_count
            # Triton's "<value>:<index>:<label>", the value as C++'s std::to_string prints a float
            strings = [
                f"{p:f}:{i}:{labels[i]}".encode()
                for r in results
                for p, i in zip(r.probabilities[:k], r.indices[:k], strict=True)
            ]
            tensors.append(OutputTensor(out.name, "BYTES", [*lead, k], serialize_bytes(strings)))
        else:
            probs = np.zeros((len(results), num_classes), dtype="<f4")
            for row, r in zip(probs, results, strict=True):
                row[r.indices] = r.probabilities  # the answer is sorted best first: back to class order
            tensors.append(OutputTensor(out.name, "FP32", [*lead, num_classes], probs.tobytes()))
    return tensors


def timing_parameters(results: Sequence[JobResult], total_ms: float) -> dict[str, float | int]:
    """Per-request timings for the response's parameters: for a batch, its slowest frame's figure of each."""
    return {
        "queue_ms": max(r.queue_ms for r in results),
        "decode_ms": max(r.decode_ms for r in results),
        "preprocess_ms": max(r.preprocess_ms for r in results),
        "inference_ms": max(r.inference_ms for r in results),
        "total_ms": total_ms,
        "batch_size": max(r.batch_size for r in results),
    }
