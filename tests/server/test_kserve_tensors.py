"""KServe v2 tensors <-> frames and answers, without gRPC (server/kserve_tensors.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeinfer.server import kserve_tensors as kt
from edgeinfer.server.batcher import JobResult
from edgeinfer.server.errors import InvalidFrame, InvalidRequest
from edgeinfer.server.preprocess import JpegImage, RawImage


def images(*tensors: kt.InputTensor, params: dict[str, object] | None = None, max_batch: int = 4) -> kt.ImageBatch:
    return kt.images_from_inputs(tensors, params or {}, model="m", max_batch_size=max_batch)


def test_bytes_round_trip_and_bad_framing() -> None:
    elements = [b"\xff\xd8one", b"", b"\xff\xd8three"]
    raw = kt.serialize_bytes(elements)
    assert raw[:4] == struct.pack("<I", 5)
    assert [bytes(e) for e in kt.deserialize_bytes(raw, 3, name="IMAGE")] == elements
    with pytest.raises(InvalidRequest, match="ends before element 3 of 4"):
        kt.deserialize_bytes(raw, 4, name="IMAGE")
    with pytest.raises(InvalidRequest, match="declares 9 bytes, only 2 follow"):
        kt.deserialize_bytes(struct.pack("<I", 9) + b"ab", 1, name="IMAGE")
    with pytest.raises(InvalidRequest, match="bytes past its 2 elements"):
        kt.deserialize_bytes(raw, 2, name="IMAGE")


def test_encoded_images_one_per_batch_item() -> None:
    raw = kt.serialize_bytes([b"\xff\xd8a", b"\xff\xd8b"])
    batch = images(kt.InputTensor("IMAGE", "BYTES", [2, 1], raw=raw))
    assert batch.batched and batch.images == [JpegImage(b"\xff\xd8a"), JpegImage(b"\xff\xd8b")]
    typed = images(kt.InputTensor("IMAGE", "BYTES", [2], bytes_contents=[b"x", b"y"]))
    assert typed.batched and [i.data for i in typed.images] == [b"x", b"y"]
    with pytest.raises(InvalidRequest, match="holds 1 elements, not 2"):
        images(kt.InputTensor("IMAGE", "BYTES", [2], bytes_contents=[b"x"]))
    with pytest.raises(InvalidRequest, match=r"shape \[N, 1\] or \[N\]"):
        images(kt.InputTensor("IMAGE", "BYTES", [2, 2], raw=raw))
    with pytest.raises(InvalidRequest, match="has no data"):
        images(kt.InputTensor("IMAGE", "BYTES", [1, 1]))


def test_pixels_are_sliced_per_frame_without_a_copy_and_take_their_order() -> None:
    data = bytes(range(2 * 2 * 3)) * 3
    batch = images(kt.InputTensor("PIXELS", "UINT8", [3, 2, 2, 3], raw=data), params={"pixel_order": "bgr"})
    assert batch.batched and len(batch.images) == 3
    first = batch.images[0]
    assert isinstance(first, RawImage) and (first.height, first.width, first.bgr) == (2, 2, True)
    assert isinstance(first.data, memoryview) and bytes(first.data) == bytes(range(12))
    one = images(
        kt.InputTensor("PIXELS", "UINT8", [2, 2, 3], raw=data[:12], parameters={"pixel_order": "RGB"}),
        params={"pixel_order": "BGR"},  # the input's own parameter wins
    )
    assert not one.batched and not one.images[0].bgr  # type: ignore[union-attr]
    typed = images(kt.InputTensor("PIXELS", "UINT8", [2, 2, 3], uint_contents=list(range(12))))
    assert bytes(typed.images[0].data) == bytes(range(12))


@pytest.mark.parametrize(
    ("tensor", "error", "words"),
    [
        (kt.InputTensor("PIXELS", "UINT8", [2, 2, 3], raw=b"\0" * 11), InvalidFrame, "needs 12 bytes"),
        (kt.InputTensor("PIXELS", "UINT8", [0, 2, 3], raw=b""), InvalidFrame, "a height and a width"),
        (kt.InputTensor("PIXELS", "UINT8", [2, 2, 3], uint_contents=[256] * 12), InvalidFrame, "over 255"),
        (kt.InputTensor("PIXELS", "UINT8", [2, 2, 3], uint_contents=[1] * 5), InvalidFrame, "needs 12 values"),
        (kt.InputTensor("PIXELS", "UINT8", [2, 2, 4], raw=b"\0" * 16), InvalidRequest, "[H, W, 3]"),
        (kt.InputTensor("PIXELS", "INT8", [2, 2, 3], raw=b"\0" * 12), InvalidRequest, "must be UINT8, got INT8"),
        (kt.InputTensor("PIXELS", "UINT8", [5, 1, 1, 3], raw=b"\0" * 15), InvalidRequest, "max_batch_size of 4"),
        (kt.InputTensor("PIXELS", "UINT8", [0, 1, 1, 3], raw=b""), InvalidRequest, "holds no image"),
        (kt.InputTensor("PIXELS", "UINT8", [-1, 1, 3], raw=b""), InvalidRequest, "negative dimension"),
        # The batch limit is checked from the shape, before a huge declared count is read.
        (kt.InputTensor("IMAGE", "BYTES", [10**9], raw=b""), InvalidRequest, "batch of 1000000000"),
    ],
)
def test_bad_tensors_say_what_is_wrong(tensor: kt.InputTensor, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as exc:
        images(tensor)
    assert words in str(exc.value.details)


def test_inputs_must_be_one_known_tensor() -> None:
    pixels = kt.InputTensor("PIXELS", "UINT8", [1, 1, 3], raw=b"\0\0\0")
    with pytest.raises(InvalidRequest, match="has no input"):
        images()
    with pytest.raises(InvalidRequest, match="unknown input 'DATA'"):
        images(kt.InputTensor("DATA", "UINT8", [1, 1, 3], raw=b"\0\0\0"))
    with pytest.raises(InvalidRequest, match="send one input"):
        images(pixels, pixels)
    with pytest.raises(InvalidRequest, match="'RGB' or 'BGR'"):
        images(pixels, params={"pixel_order": 3})


def test_requested_outputs_and_how_many_classes_they_need() -> None:
    assert kt.requested_outputs([], model="m", num_classes=1000) == [kt.RequestedOutput("PROBABILITIES")]
    top3 = kt.requested_outputs([("PROBABILITIES", {"classification": 3})], model="m", num_classes=1000)
    assert top3 == [kt.RequestedOutput("PROBABILITIES", 3)]
    assert kt.top_k_needed(top3, 1000) == 3
    assert kt.top_k_needed([kt.RequestedOutput("PROBABILITIES")], 1000) == 1000
    assert kt.requested_outputs([("PROBABILITIES", {"class_count": 2})], model="m", num_classes=10)[0].class_count == 2
    for bad, words in [
        ([("LOGITS", {})], "unknown output 'LOGITS'"),
        ([("PROBABILITIES", {"classification": 0})], "between 1 and 10"),
        ([("PROBABILITIES", {"classification": "5"})], "integer class count"),
        ([("PROBABILITIES", {}), ("PROBABILITIES", {"classification": 1})], "asked for 2 times"),
    ]:
        with pytest.raises(InvalidRequest, match=words):
            kt.requested_outputs(bad, model="m", num_classes=10)


def _result(probabilities: list[float], indices: list[int], batch_size: int = 1) -> JobResult:
    return JobResult(probabilities, indices, 0.5, 1.0, 2.0, 3.0, batch_size)


def test_outputs_probabilities_in_class_order_and_triton_classification_strings() -> None:
    labels = ["cat", "dog", "eel", "fox"]
    results = [_result([0.7, 0.2, 0.1, 0.0], [2, 0, 3, 1]), _result([0.4, 0.3, 0.2, 0.1], [1, 0, 2, 3], 2)]
    [probs] = kt.output_tensors([kt.RequestedOutput("PROBABILITIES")], results, labels=labels, batched=True)
    assert (probs.datatype, probs.shape) == ("FP32", [2, 4])
    np.testing.assert_array_equal(
        np.frombuffer(probs.raw, "<f4").reshape(2, 4), np.array([[0.2, 0.0, 0.7, 0.1], [0.3, 0.4, 0.2, 0.1]], "f4")
    )
    [top] = kt.output_tensors([kt.RequestedOutput("PROBABILITIES", 2)], results[:1], labels=labels, batched=False)
    assert (top.datatype, top.shape) == ("BYTES", [2])
    assert [bytes(e) for e in kt.deserialize_bytes(top.raw, 2, name="x")] == [b"0.700000:2:eel", b"0.200000:0:cat"]
    timings = kt.timing_parameters(results, total_ms=9.0)
    assert timings == {
        "queue_ms": 0.5,
        "decode_ms": 1.0,
        "preprocess_ms": 2.0,
        "inference_ms": 3.0,
        "total_ms": 9.0,
        "batch_size": 2,
    }
