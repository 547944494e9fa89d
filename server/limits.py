"""Limits on one frame, checked from what it declares before any pixel buffer exists.

A 2 KB JPEG can declare a 65000 x 65000 image, and libjpeg (torchvision's
``decode_jpeg``) allocates the whole output before it reads a single scan: 12 GB
for one frame. So the declared size is read first, from the JPEG's frame header
(its SOF marker) or from the raw / shared-memory frame's own fields, and held
against ``--max-pixels`` and ``--max-side``. The resize step is bounded too: a
1 x 8000 frame is small, but resizing its shorter side to 256 would make a
256 x 2,048,000 image; its output size is checked against the same pixel limit.

Nothing here knows about gRPC. A frame over --max-frame-bytes raises
:class:`LimitExceeded` (RESOURCE_EXHAUSTED, as before); one that declares more
pixels than the daemon decodes, or cannot be read, raises :class:`InvalidFrame`
(INVALID_ARGUMENT, issue 16): that frame can never be decoded here as sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgeinfer.server.defaults import DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from edgeinfer.server.errors import InvalidFrame, LimitExceeded

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "FrameLimits",
    "jpeg_size",
    "resized_size",
]


# Start-of-frame markers carry the image size: SOF0-SOF15 except DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field
# Real files have a dozen segments before the frame header (APPn, DQT, DHT, COM); the
# cap keeps a hostile file of 8 MB of empty segments from costing seconds of Python.
_MAX_SEGMENTS = 1024


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) as the JPEG's first frame header declares them, without decoding anything.

    libjpeg takes the first SOF too (a second one is an error), so this is the size the
    decoder would allocate for.
    """
    n = len(data)
    if n < 2 or data[0] != 0xFF or data[1] != 0xD8:
        raise InvalidFrame("image.jpeg does not start with a JPEG SOI marker (FF D8); is it a JPEG?")
    i = 2
    for _ in range(_MAX_SEGMENTS):
        if i + 2 > n:
            break
        if data[i] != 0xFF:
            raise InvalidFrame(f"image.jpeg could not be decoded: no marker at byte {i} before its frame header")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            break
        if i + 4 > n:
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise InvalidFrame(f"image.jpeg could not be decoded: a segment at byte {i} declares length {length}")
        if marker in _SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack_from(">HH", data, i + 5)
            if height == 0 or width == 0:
                raise InvalidFrame(
                    f"image.jpeg could not be decoded: its frame header declares a {width}x{height} image"
                )
            return height, width
        i += 2 + length
    else:
        raise InvalidFrame(f"image.jpeg could not be decoded: over {_MAX_SEGMENTS} segments before its frame header")
    raise InvalidFrame(
        "image.jpeg could not be decoded: no frame header (SOF marker) before its image data; is it complete?"
    )


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The size torchvision's ``resize(img, [shorter])`` makes: shorter side to ``shorter``, aspect kept."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


@dataclass(frozen=True)
class FrameLimits:
    """``--max-frame-bytes``, ``--max-pixels`` and ``--max-side``, checked before the work they bound."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE

    def check_bytes(self, n: int) -> None:
        if n == 0:
            raise InvalidFrame("frame has no image data: set image.jpeg or image.raw")
        if n > self.max_frame_bytes:
            raise LimitExceeded(
                f"frame of {n} bytes is over this daemon's limit of {self.max_frame_bytes} bytes "
                f"(--max-frame-bytes); send a smaller image or a JPEG"
            )

    def check_size(self, height: int, width: int, what: str = "frame") -> None:
        """A declared image size, before anything of that size is allocated."""
        if height == 0 or width == 0:
            raise InvalidFrame(f"{what} must have a height and a width, got {height}x{width}")
        if max(height, width) > self.max_side:
            raise InvalidFrame(
                f"{what} of {width}x{height} has a side over this daemon's limit of {self.max_side} pixels "
                f"(--max-side); scale it down before sending"
            )
        if height * width > self.max_pixels:
            raise InvalidFrame(
                f"{what} of {width}x{height} ({height * width} pixels) is over this daemon's limit of "
                f"{self.max_pixels} pixels (--max-pixels); scale it down before sending"
            )

    def check_resize(self, height: int, width: int, shorter: int, what: str = "frame") -> None:
        """The resize step's output, which a very elongated frame makes far larger than the frame."""
        out_h, out_w = resized_size(height, width, shorter)
        if out_h * out_w > self.max_pixels:
            raise InvalidFrame(
                f"{what} of {width}x{height} is too elongated: resizing its shorter side to {shorter} would make "
                f"a {out_w}x{out_h} image, over --max-pixels {self.max_pixels}; crop it closer to square"
            )

    def check_jpeg(self, data: bytes | memoryview, shorter: int | None = None) -> tuple[int, int]:
        """Bytes, then the declared size: a JPEG's header costs microseconds to read, its pixels do not."""
        self.check_bytes(len(data))
        height, width = jpeg_size(data)
        self.check_size(height, width, "image.jpeg")
        if shorter:
            self.check_resize(height, width, shorter, "image.jpeg")
        return height, width

    def check_raw(self, height: int, width: int, shorter: int | None = None, what: str = "raw frame") -> None:
        """A raw or shared-memory frame's declared size (its bytes are checked apart, against --max-frame-bytes)."""
        self.check_size(height, width, what)
        if shorter:
            self.check_resize(height, width, shorter, what)
