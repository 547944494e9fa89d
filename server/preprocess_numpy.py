"""Frame preprocessing without torch, for models served by ONNX Runtime (a board's daemon).

The same steps as server/preprocess.py, in numpy: decode (simplejpeg, libjpeg-turbo's
islow IDCT like torchvision's decoder, strict about damaged data), resize the shorter
side with an antialiased bilinear filter, center-crop, scale and normalize.

The resize is torchvision's ``antialias=True`` filter (itself PIL's): a triangle whose
support widens with the downscale factor, applied width first, then height, the image
rounded to uint8 between the passes as torchvision's uint8 kernel does. Only the rows
and columns the center crop keeps are computed. Measured against torchvision on
real photos: tests/server/test_preprocess_numpy.py and bench/board.py report the mean
|pixel difference| (in grey levels of the 0-255 input).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from edgeinfer.server.errors import InvalidFrame
from edgeinfer.server.frames import FrameImage, JpegImage, PreprocessedFrame, Preprocessing, RawImage
from edgeinfer.server.limits import FrameLimits

try:
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the install ([edge] has it)
    simplejpeg = None

__all__ = ["NumpyPreprocessor", "antialias_weights", "resized_size"]


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's Resize([short]): the shorter side to ``short``, the longer one scaled and truncated."""
    if height <= width:
        return short, max(1, int(short * width / height))
    return max(1, int(short * height / width)), short


@functools.lru_cache(maxsize=64)
def antialias_weights(in_size: int, out_size: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (``count`` x taps) of output pixels ``first .. first+count-1``.

    PIL's bilinear resampling coefficients (torchvision's antialias path computes the same):
    support 1 scaled by the downscale factor, each row normalized to sum 1.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    taps = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(first, first + count) + 0.5) * scale
    starts = np.clip((centers - support + 0.5).astype(np.int64), 0, in_size)
    stops = np.clip((centers + support + 0.5).astype(np.int64), 0, in_size)
    offsets = np.arange(taps)
    index = starts[:, None] + offsets[None, :]
    valid = index < stops[:, None]
    x = (index - centers[:, None] + 0.5) / support
    weights = np.where(valid, np.clip(1.0 - np.abs(x), 0.0, None), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(index, in_size - 1), weights.astype(np.float32)


def _resample_rows(pixels: np.ndarray, out_size: int, first: int, count: int) -> np.ndarray:
    """Resample the rows (axis 0) of ``pixels`` (H x W x 3 uint8), keeping outputs first..first+count-1.

    Each tap gathers whole rows (contiguous memory), weighs them and adds them up in float32.
    """
    index, weights = antialias_weights(pixels.shape[0], out_size, first, count)
    out = np.zeros((count, *pixels.shape[1:]), np.float32)
    for tap in range(index.shape[1]):
        out += weights[:, tap, None, None] * pixels[index[:, tap]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resample_columns(pixels: np.ndarray, out_size: int, first: int, count: int) -> np.ndarray:
    """The same along the columns: on a transposed copy of the columns read (gathering rows is 3x faster
    than gathering columns of an H x W x 3 image), transposed back."""
    index, weights = antialias_weights(pixels.shape[1], out_size, first, count)
    lo, hi = int(index.min()), int(index.max()) + 1
    columns = np.ascontiguousarray(pixels[:, lo:hi].transpose(1, 0, 2))
    out = np.zeros((count, *columns.shape[1:]), np.float32)
    for tap in range(index.shape[1]):
        out += weights[:, tap, None, None] * columns[index[:, tap] - lo]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).transpose(1, 0, 2)


class NumpyPreprocessor:
    """One frame's bytes -> a normalized float32 3 x crop x crop array (numpy, no torch)."""

    def __init__(self, config: Preprocessing, *, max_frame_bytes: int = 8 << 20, limits: FrameLimits | None = None):
        if config.interpolation != "bilinear":
            raise ValueError(f"the numpy preprocessor resizes bilinear only, not {config.interpolation}")
        self.config = config
        self.limits = limits or FrameLimits(max_frame_bytes=max_frame_bytes)
        self.max_frame_bytes = self.limits.max_frame_bytes
        std = np.asarray(config.std, np.float32)
        mean = np.asarray(config.mean, np.float32)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)  # (x / 255 - mean) / std == x * scale + shift
        self._shift = (-mean / std).astype(np.float32)

    def __call__(self, image: FrameImage) -> PreprocessedFrame:
        t0 = time.perf_counter()
        pixels = self.decode(image)
        t1 = time.perf_counter()
        out = self.transform(pixels, bgr=isinstance(image, RawImage) and image.bgr)
        return PreprocessedFrame(out, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)

    def decode(self, image: FrameImage) -> np.ndarray:
        """uint8 H x W x 3: RGB, or BGR for a raw BGR frame (swapped after the crop)."""
        if isinstance(image, JpegImage):
            self.limits.check_jpeg(image.data, self.config.resize_size)  # the header's size, before decoding
            if not image.data.startswith(b"\xff\xd8"):
                raise InvalidFrame("image.jpeg does not start with a JPEG SOI marker (FF D8); is it a JPEG?")
            if simplejpeg is None:
                raise InvalidFrame("this daemon cannot decode JPEG without simplejpeg: pip install 'edgeinfer[edge]'")
            try:
                return np.asarray(simplejpeg.decode_jpeg(image.data, colorspace="RGB", strict=True))
            except ValueError as exc:
                raise InvalidFrame(f"image.jpeg could not be decoded (damaged or truncated): {exc}") from exc
        self.limits.check_bytes(len(image.data))
        self.limits.check_raw(image.height, image.width, self.config.resize_size)
        h, w = image.height, image.width
        if len(image.data) != h * w * 3:
            raise InvalidFrame(
                f"raw frame of {h}x{w}x3 needs {h * w * 3} bytes, got {len(image.data)}; "
                f"send height*width*3 bytes of interleaved uint8 pixels"
            )
        return np.frombuffer(image.data, np.uint8).reshape(h, w, 3)

    def transform(self, pixels: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """uint8 H x W x 3 -> normalized float32 3 x crop x crop (RGB)."""
        cfg = self.config
        h, w = pixels.shape[:2]
        out_h, out_w = resized_size(h, w, cfg.resize_size)
        crop = cfg.crop_size
        # torchvision's center_crop: offsets rounded; a crop larger than the image is not served here
        top, left = round((out_h - crop) / 2.0), round((out_w - crop) / 2.0)
        if top < 0 or left < 0:
            raise InvalidFrame(f"a {h}x{w} frame resized to {out_h}x{out_w} is smaller than the {crop}px crop")
        # width first, then height, as torchvision's uint8 kernel (and PIL)
        pixels = _resample_columns(pixels, out_w, left, crop) if out_w != w else pixels[:, left : left + crop]
        pixels = _resample_rows(pixels, out_h, top, crop) if out_h != h else pixels[top : top + crop]
        if bgr:
            pixels = pixels[..., ::-1]
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        chw *= self._scale[:, None, None]
        chw += self._shift[:, None, None]
        return chw
