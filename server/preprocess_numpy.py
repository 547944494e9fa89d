"""Frame preprocessing without torch, for models served by ONNX Runtime (a board's daemon).

The same steps as server/preprocess.py, without torch: decode (simplejpeg, libjpeg-turbo's
islow IDCT like torchvision's decoder, strict about damaged data), resize the shorter side
with an antialiased bilinear filter, center-crop, then scale and normalize in numpy.

The resize is Pillow's: torchvision's ``antialias=True`` filter is PIL's (a triangle whose
support widens with the downscale factor, width first, then height, the image rounded to
uint8 between the passes), and its uint8 kernel is a port of Pillow's fixed-point one. Only
the pixels the center crop keeps are computed: Pillow resizes the crop's source box, whose
filter taps are those of the whole image's resize. Measured against torchvision on real
photos: tests/server/test_preprocess_numpy.py and bench/board.py report the mean |pixel
difference| (in grey levels of the 0-255 input). Pillow does it in 2.1 ms for a 720p frame
where a numpy filter took 6.3 ms (torchvision's AVX2 kernel: 0.7 ms).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from edgeinfer.server.errors import InvalidFrame
from edgeinfer.server.frames import FrameImage, JpegImage, PreprocessedFrame, Preprocessing, RawImage
from edgeinfer.server.limits import FrameLimits, resized_size

try:
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the install ([edge] has it)
    simplejpeg = None

__all__ = ["NumpyPreprocessor", "resize_crop"]


def resize_crop(pixels: np.ndarray, out_h: int, out_w: int, top: int, left: int, crop: int) -> np.ndarray:
    """``crop`` x ``crop`` pixels at (``top``, ``left``) of ``pixels`` (H x W x 3 uint8) resized to out_h x out_w."""
    h, w = pixels.shape[:2]
    sx, sy = w / out_w, h / out_h
    # Two calls, each resizing one axis, so the passes run width first as torchvision's do: given
    # both at once, Pillow may run the height first, which rounds differently (1 level in 20% of pixels).
    image = Image.fromarray(pixels)
    if out_w != w:
        image = image.resize((crop, h), Image.Resampling.BILINEAR, box=(left * sx, 0, (left + crop) * sx, h))
    else:
        image = image.crop((left, 0, left + crop, h))
    if out_h != h:
        image = image.resize((crop, crop), Image.Resampling.BILINEAR, box=(0, top * sy, crop, (top + crop) * sy))
    else:
        image = image.crop((0, top, crop, top + crop))
    return np.asarray(image)


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
        if (out_h, out_w) == (h, w):  # a client that sent what the resize makes (edgeclient --client-resize)
            pixels = pixels[top : top + crop, left : left + crop]
        else:
            pixels = resize_crop(np.ascontiguousarray(pixels), out_h, out_w, top, left, crop)
        if bgr:
            pixels = pixels[..., ::-1]
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        chw *= self._scale[:, None, None]
        chw += self._shift[:, None, None]
        return chw
