from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeinfer.client.frames import Encoder, Frame, as_frame
from edgeinfer.proto import edgeinfer_pb2 as pb
from helpers import synthetic_frame


def test_raw_encoding_keeps_pixels_and_order() -> None:
    image = synthetic_frame(3, 64, 48)
    msg = Encoder("raw").to_proto(Frame(image, bgr=True))
    assert msg.WhichOneof("data") == "raw"
    # With OpenCV at hand the client swaps BGR to RGB itself (cheaper than on the daemon).
    assert (msg.raw.height, msg.raw.width, msg.raw.pixel_format) == (48, 64, pb.PIXEL_FORMAT_RGB)
    assert np.array_equal(np.frombuffer(msg.raw.data, np.uint8).reshape(48, 64, 3), image[..., ::-1])
    rgb = Encoder("raw").to_proto(Frame(image, bgr=False))
    assert rgb.raw.pixel_format == pb.PIXEL_FORMAT_RGB and rgb.raw.data == image.tobytes()


def test_write_fills_a_request_in_place_as_to_proto_builds_it() -> None:
    image = synthetic_frame(5, 64, 48)
    for encoding in ("raw", "jpeg"):
        request = pb.StreamRequest()
        Encoder(encoding).write(Frame(image), request.frame.image)
        assert request.frame.image == Encoder(encoding).to_proto(Frame(image))
    assert request.frame.image.WhichOneof("data") == "jpeg"


def test_jpeg_encoding_decodes_back_close_to_original() -> None:
    image = synthetic_frame(1, 128, 96)
    msg = Encoder("jpeg", quality=95).to_proto(Frame(image))
    assert msg.jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3


def test_rgb_frames_are_swapped_before_jpeg() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 255  # pure red in RGB
    msg = Encoder("jpeg", quality=100).to_proto(Frame(image, bgr=False))
    b, g, r = cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR)[16, 16]
    assert r > 240 and b < 15 and g < 15


def test_jpeg_bytes_pass_through_untouched() -> None:
    data = b"\xff\xd8anything"
    assert Encoder().to_proto(Frame(data)).jpeg == data


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)]
)
def test_wrong_arrays_are_refused_with_the_shape(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Encoder("raw").to_proto(Frame(bad))


def test_as_frame_numbers_and_timestamps() -> None:
    f = as_frame(np.zeros((2, 2, 3), np.uint8), 41)
    assert f.sequence == 41 and f.capture_time_ns and f.capture_time_ns > 0
    assert as_frame(Frame(b"x", sequence=5), 41).sequence == 5


def test_encoder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="quality"):
        Encoder("jpeg", quality=0)
    with pytest.raises(ValueError, match="encoding"):
        Encoder("png")
