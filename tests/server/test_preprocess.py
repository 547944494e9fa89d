"""Decode + preprocess agree with torchvision's reference transforms, and bad frames are refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg
from torchvision.models import SqueezeNet1_0_Weights

from edgeinfer.server.errors import InvalidFrame, LimitExceeded
from edgeinfer.server.preprocess import JpegImage, Preprocessor, RawImage
from edgeinfer.server.registry import get_spec
from helpers import jpeg, synthetic_frame

CPU = torch.device("cpu")


@pytest.fixture
def pre() -> Preprocessor:
    return Preprocessor(get_spec("squeezenet").preprocessing, device=CPU, max_frame_bytes=1 << 20)


def test_matches_torchvision_reference_transform(pre: Preprocessor) -> None:
    data = jpeg(synthetic_frame(4, 640, 480))
    ours = pre(JpegImage(data))
    reference = SqueezeNet1_0_Weights.IMAGENET1K_V1.transforms()(
        decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    )
    assert ours.tensor.shape == (3, 224, 224) and ours.tensor.dtype == torch.float32
    # Resizing uint8 directly may round a pixel one level differently from the
    # reference's path: allow one level, (1/255)/std, and nothing systematic.
    one_level = 1 / (255 * min(pre.config.std)) + 1e-5
    diff = (ours.tensor - reference).abs()
    assert diff.max() <= one_level and diff.mean() < 0.002
    assert ours.decode_ms > 0 and ours.preprocess_ms > 0


def test_raw_rgb_and_bgr_give_the_same_tensor(pre: Preprocessor) -> None:
    bgr = synthetic_frame(2, 300, 200)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    a = pre(RawImage(200, 300, bgr.tobytes(), bgr=True)).tensor
    b = pre(RawImage(200, 300, rgb.tobytes(), bgr=False)).tensor
    assert torch.equal(a, b)


def test_raw_and_jpeg_of_the_same_frame_agree(pre: Preprocessor) -> None:
    frame = synthetic_frame(6, 320, 240)
    data = jpeg(frame, quality=100)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    raw = pre(RawImage(240, 320, decoded.tobytes(), bgr=True)).tensor
    from_jpeg = pre(JpegImage(data)).tensor
    assert (raw - from_jpeg).abs().mean() < 0.02  # decoders differ only in rounding


def test_grayscale_jpeg_is_expanded_to_rgb(pre: Preprocessor) -> None:
    gray = cv2.cvtColor(synthetic_frame(1), cv2.COLOR_BGR2GRAY)
    ok, buf = cv2.imencode(".jpg", gray)
    assert ok
    assert pre(JpegImage(buf.tobytes())).tensor.shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (JpegImage(b""), InvalidFrame, "no image data"),
        (JpegImage(b"GIF89a" + b"\0" * 20), InvalidFrame, "SOI marker"),
        (JpegImage(jpeg(synthetic_frame(0))[:300]), InvalidFrame, "could not be decoded"),
        (RawImage(10, 10, b"\0" * 299), InvalidFrame, "needs 300 bytes, got 299"),
        (RawImage(0, 10, b"\0" * 30), InvalidFrame, "height and a width"),
        (JpegImage(b"\xff\xd8" + b"\0" * (1 << 20)), LimitExceeded, "--max-frame-bytes"),
    ],
)
def test_bad_frames_are_refused_with_a_reason(pre: Preprocessor, image: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        pre(image)  # type: ignore[arg-type]


def test_a_damaged_jpeg_is_an_error_not_a_partly_grey_image() -> None:
    # libjpeg decodes a JPEG whose middle is damaged with only a warning ("Corrupt JPEG data:
    # premature end of data segment") and fills the rest grey; such a frame must not be classified.
    data = bytearray(jpeg(synthetic_frame(3, 640, 480)))
    middle = len(data) // 2
    data[middle : middle + 50] = bytes(50)
    pre = Preprocessor(get_spec("squeezenet").preprocessing, device=torch.device("cpu"))
    with pytest.raises(InvalidFrame) as damaged:
        pre(JpegImage(bytes(data)))
    assert "(damaged or truncated): Corrupt JPEG data" in damaged.value.details
    with pytest.raises(InvalidFrame) as truncated:
        pre(JpegImage(bytes(jpeg(synthetic_frame(3, 640, 480))[:-100])))
    assert "could not be decoded" in truncated.value.details
