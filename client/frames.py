"""Frames on the client side, and how they become wire images (JPEG or raw).

JPEG encoding uses OpenCV (the ``[camera]`` extra). Without it, a robot can
still send raw uint8 frames or JPEG bytes it already has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgeinfer.media.cv import optional_cv2, require_cv2
from edgeinfer.media.images import Fit, decode_image, is_jpeg, jpeg_needs_shrink, shrink
from edgeinfer.media.sources import ImageFile
from edgeinfer.proto import edgeinfer_pb2 as pb

__all__ = ["Encoder", "Frame", "as_frame", "prepare", "raw_pixels"]

# shm: raw pixels in a shared-memory slot (client/shm.py, streams to a same-host daemon);
# a frame that gets no slot goes inline as raw.
ENCODINGS = ("jpeg", "raw", "shm")


@dataclass
class Frame:
    """One image to send. ``image`` is HxWx3 uint8 (BGR unless ``bgr=False``) or JPEG bytes."""

    image: np.ndarray | bytes
    sequence: int | None = None
    capture_time_ns: int | None = None
    bgr: bool = True


def as_frame(item: Frame | np.ndarray | bytes, default_sequence: int) -> Frame:
    frame = item if isinstance(item, Frame) else Frame(item)
    if frame.sequence is None:
        frame.sequence = default_sequence
    if frame.capture_time_ns is None:
        frame.capture_time_ns = time.time_ns()
    return frame


class Encoder:
    """Turns frames into ``edgeinfer.v1.Image`` messages."""

    def __init__(self, encoding: str = "jpeg", quality: int = 90) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {quality}")
        self.encoding = encoding
        self.quality = quality

    def to_proto(self, frame: Frame) -> pb.Image:
        image = pb.Image()
        self.write(frame, image)
        return image

    def write(self, frame: Frame, into: pb.Image) -> None:
        """Encode ``frame`` into ``into``, a field of the request being built.

        Requests are built in place: handing a message to a parent's constructor
        (``pb.Frame(image=...)``) copies it, pixels and all, once per level of
        nesting: three copies of a raw frame for a ``StreamRequest``, none filled in place.
        """
        image = frame.image
        if isinstance(image, (bytes, bytearray, memoryview)):
            into.jpeg = bytes(image)
            return
        image = _check_array(image)
        if self.encoding in ("raw", "shm"):
            h, w, _ = image.shape
            pixels, order = raw_pixels(image, bgr=frame.bgr)
            raw = into.raw
            raw.height, raw.width, raw.pixel_format = h, w, order
            raw.data = pixels.tobytes()
            return
        cv2 = require_cv2()
        if not frame.bgr:
            image = image[..., ::-1]
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError(f"OpenCV could not JPEG-encode a frame of shape {image.shape}")
        into.jpeg = buf.tobytes()


def raw_pixels(image: np.ndarray, *, bgr: bool, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The pixels to send raw (written into ``out`` when given) and their ``PixelFormat``.

    BGR frames are sent as RGB when OpenCV is there: its SIMD swap on the client costs
    less than the daemon's channel flip, and moves that work off the daemon's cores.
    Without OpenCV they go as BGR and the daemon swaps.
    """
    if bgr and (cv2 := optional_cv2()) is not None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=out), pb.PIXEL_FORMAT_RGB
    if out is not None:
        np.copyto(out, image)
        image = out
    return image, pb.PIXEL_FORMAT_BGR if bgr else pb.PIXEL_FORMAT_RGB


def _check_array(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"a frame must be an HxWx3 uint8 array or JPEG bytes, got {desc}")
    return np.ascontiguousarray(image)


def prepare(frame: Frame, fit: Fit, *, need_pixels: bool) -> None:
    """Turn ``frame.image`` into what goes on the wire: JPEG bytes as they are, or (shrunk) pixels.

    A ``fit`` with a resize size shrinks a larger frame to what the daemon's preprocessing
    keeps of it first (``Fit()``: off).
    ``need_pixels``: the encoding sends pixels (raw/shm), so JPEG bytes are decoded too.
    Raises ``edgeinfer.media.SourceError`` for a file that cannot be read or decoded.
    """
    image = frame.image
    if isinstance(image, ImageFile):
        data = image.read()
        name = str(image.path)
        if is_jpeg(data) and not need_pixels and not jpeg_needs_shrink(data, fit.resize_size):
            frame.image = data  # byte for byte: the daemon decodes and validates it
        else:
            frame.image = decode_image(data, name=name, resize_size=fit.resize_size, crop_size=fit.crop_size)
    elif isinstance(image, np.ndarray) and fit.resize_size:
        frame.image = shrink(image, *fit)
