"""Decoding image files strictly, and shrinking frames the way the daemon's resize would.

A damaged JPEG must never reach a model: libjpeg decodes one with only a warning on
stderr and grey where the data ran out. simplejpeg (libjpeg-turbo, in the ``[camera]``
extra) raises on those warnings instead, and decodes at a reduced size with the JPEG's
own DCT scaling (1/8 steps), which costs a fraction of a full decode. Without it,
OpenCV decodes, and a JPEG without its end marker is refused.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from edgeinfer.media.cv import require_cv2
from edgeinfer.media.sources import SourceError

__all__ = ["Fit", "decode_image", "is_jpeg", "jpeg_needs_shrink", "kept_window", "resized_shape", "shrink"]

try:
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the install
    simplejpeg = None


class Fit(NamedTuple):
    """A model's preprocessing: the shorter side to ``resize_size``, then the center ``crop_size`` square.

    A client shrinks frames to it before sending them (:func:`shrink`); 0 for either: not known.
    """

    resize_size: int = 0
    crop_size: int = 0


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def resized_shape(height: int, width: int, resize_size: int) -> tuple[int, int] | None:
    """(h, w) the daemon's resize gives (shorter side to ``resize_size``), or None when it would not shrink.

    Rounded as torchvision's ``resize(img, [size])`` rounds, so that the daemon's resize
    of a frame shrunk here is the identity.
    """
    short, long = min(height, width), max(height, width)
    if resize_size <= 0 or short <= resize_size:
        return None
    new_long = int(resize_size * long / short)
    return (resize_size, new_long) if height <= width else (new_long, resize_size)


def kept_window(height: int, width: int, resize_size: int, crop_size: int) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right): the part of a frame that survives the daemon's resize and center crop.

    The window is what becomes a ``resize_size`` square once shrunk, placed so that the
    daemon's own center crop of that square lands on the pixels its crop of the whole
    resized frame would take (torchvision's rounding, both times), and on the 2x2 blocks
    :func:`shrink`'s halvings of the whole frame would average. None when the frame is not
    larger than ``resize_size`` or no crop is known (``crop_size`` 0): then all of it.
    """
    shape = resized_shape(height, width, resize_size)
    if shape is None or not 0 < crop_size <= resize_size:
        return None
    block = 1 << _halvings((height, width), shape)

    def span(full: int, resized: int) -> tuple[int, int]:
        if resized <= resize_size:
            return 0, full
        start = round((resized - crop_size) / 2.0) - round((resize_size - crop_size) / 2.0)
        scale = full / block / resized  # pixels of the halved frame per shrunk pixel
        return block * round(start * scale), min(full, block * round((start + resize_size) * scale))

    return (*span(height, shape[0]), *span(width, shape[1]))


def _halvings(size: tuple[int, int], target: tuple[int, int]) -> int:
    """How many 2x2 halvings :func:`shrink` makes before its last area step."""
    n = 0
    while size[0] >> n >= 2 * target[0] and size[1] >> n >= 2 * target[1]:
        n += 1
    return n


def shrink(image: np.ndarray, resize_size: int, crop_size: int = 0) -> np.ndarray:
    """``image`` brought down to what the daemon's resize makes of it (area interpolation); as is if smaller.

    With ``crop_size`` (the model's input side), only the part the daemon's center crop
    keeps is shrunk and returned, as a ``resize_size`` square: the daemon's resize of it is
    the identity and its crop takes the same pixels, for fewer bytes and less work on both sides.
    """
    shape = resized_shape(image.shape[0], image.shape[1], resize_size)
    if shape is None:
        return image
    window = kept_window(image.shape[0], image.shape[1], resize_size, crop_size)
    if window is not None:
        top, bottom, left, right = window
        image = image[top:bottom, left:right]
        shape = (min(resize_size, shape[0]), min(resize_size, shape[1]))
    cv2 = require_cv2()
    # Halve with a 2x2 box while the frame is at least twice the target, then one area step of less
    # than 2x: OpenCV's area resize is fast for a factor of 2 only (1280x720 -> 455x256 in one step
    # 2.0 ms, so 1.0 ms; 1920x1080 4.1 ms, so 1.4 ms). Every step averages areas: nothing aliases.
    for _ in range(_halvings(image.shape[:2], shape)):
        h, w = image.shape[0] // 2, image.shape[1] // 2
        image = cv2.resize(image[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    if (image.shape[0], image.shape[1]) == shape:
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def jpeg_needs_shrink(data: bytes, resize_size: int) -> bool:
    """Whether this JPEG is larger than ``resize_size`` (read from its header; False when that cannot be told)."""
    if not resize_size or simplejpeg is None:
        return False
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False  # the daemon decodes it and says what is wrong
    return resized_shape(height, width, resize_size) is not None


def decode_image(data: bytes, *, name: str = "image", resize_size: int = 0, crop_size: int = 0) -> np.ndarray:
    """BGR pixels of an encoded image, shrunk as :func:`shrink` does when it is larger (0: full size).

    Raises :class:`SourceError` for bytes that are not an image or a JPEG that is damaged.
    """
    if is_jpeg(data) and simplejpeg is not None:
        return shrink(_decode_jpeg_strict(data, name, resize_size), resize_size, crop_size)
    if is_jpeg(data) and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise SourceError(f"{name} is a truncated JPEG (no end-of-image marker)")
    cv2 = require_cv2()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{name} is not an image OpenCV can decode")
    return shrink(image, resize_size, crop_size)


def _decode_jpeg_strict(data: bytes, name: str, resize_size: int) -> np.ndarray:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        kwargs: dict[str, Any] = {}
        shape = resized_shape(height, width, resize_size) if resize_size else None
        if shape is not None:  # DCT scaling: the smallest 1/8 step still at least the target size
            kwargs = {"min_height": shape[0], "min_width": shape[1]}
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, **kwargs)
    except ValueError as exc:
        raise SourceError(f"{name} is a damaged JPEG: {exc}") from exc
