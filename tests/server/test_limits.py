"""Frame limits read from what a frame declares: the JPEG header parser, and the resize bound."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from edgeinfer.server.errors import InvalidFrame, LimitExceeded
from edgeinfer.server.limits import FrameLimits, jpeg_size, resized_size
from helpers import jpeg, synthetic_frame


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_size_reads_the_frame_header_of_baseline_and_progressive_files(progressive: bool) -> None:
    frame = synthetic_frame(1, 123, 45)  # width 123, height 45
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    data = buf.tobytes()
    assert ok and (b"\xff\xc2" in data) is progressive
    assert jpeg_size(data) == (45, 123)
    # Fill bytes before a marker and a comment segment change nothing.
    assert jpeg_size(data[:2] + b"\xff\xff\xff\xfe\x00\x05abc" + data[2:]) == (45, 123)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "SOI marker"),
        (b"\x89PNG\r\n", "SOI marker"),
        (b"\xff\xd8", "no frame header"),
        (b"\xff\xd8\xff\xda\x00\x02", "no frame header"),  # start of scan first
        (b"\xff\xd8\x00\x00", "no marker at byte 2"),
        (b"\xff\xd8\xff\xe0\x00\x01", "declares length 1"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10", "declares a 16x0 image"),
        (b"\xff\xd8" + b"\xff\xfe\x00\x02" * 5000, "over 1024 segments"),
    ],
)
def test_jpeg_size_refuses_what_is_no_usable_header(data: bytes, text: str) -> None:
    with pytest.raises(InvalidFrame, match=text):
        jpeg_size(data)


@pytest.mark.parametrize(("height", "width"), [(480, 640), (640, 480), (1, 300), (300, 1), (256, 256), (17, 1000)])
def test_resized_size_is_what_torchvision_makes(height: int, width: int) -> None:
    out = F.resize(torch.zeros(3, height, width, dtype=torch.uint8), [256], antialias=True)
    assert tuple(out.shape[1:]) == resized_size(height, width, 256)


def test_limits_name_the_flag_a_frame_is_over() -> None:
    limits = FrameLimits(max_frame_bytes=1000, max_pixels=10_000, max_side=200)
    limits.check_size(100, 100)
    with pytest.raises(InvalidFrame, match="--max-side"):
        limits.check_size(1, 201)
    with pytest.raises(InvalidFrame, match="--max-pixels"):
        limits.check_size(101, 100)
    with pytest.raises(InvalidFrame, match="too elongated"):
        limits.check_resize(1, 200, 256)
    with pytest.raises(LimitExceeded, match="--max-frame-bytes"):
        limits.check_bytes(1001)
    with pytest.raises(InvalidFrame, match="no image data"):
        limits.check_bytes(0)
    small = jpeg(np.zeros((20, 30, 3), np.uint8))
    assert FrameLimits().check_jpeg(small, 256) == (20, 30)
