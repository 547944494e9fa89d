"""Where a frame gets decoded and turned into a model input tensor.

JPEG decode is torchvision.io (libjpeg-turbo on the CPU, nvjpeg on CUDA); raw
frames are wrapped without a copy. Resize, crop and normalize are tensor ops on
uint8 until the last step, which scales and normalizes in one fused pass.
Every frame's declared size is held against its :class:`FrameLimits` before
the decoder or the resize allocates anything (server/limits.py). Nothing here
knows about gRPC: bad input raises :class:`InvalidFrame` or :class:`LimitExceeded`.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from edgeinfer.server.errors import InvalidFrame
from edgeinfer.server.frames import FrameImage, JpegImage, PreprocessedFrame, Preprocessing, RawImage
from edgeinfer.server.limits import FrameLimits

try:  # libjpeg-turbo that reports damage: see Preprocessor._decode_jpeg
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the install
    simplejpeg = None

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on
# every decode call. They are still the libjpeg-turbo/nvjpeg decoders DESIGN.md
# chose; moving to TorchCodec is tracked separately. Only this message is hidden.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)
# Raw frames are read in place from the message's bytes or a shared-memory map, both
# read-only. Nothing here writes to an input tensor (resize allocates its output).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)

__all__ = ["FrameImage", "JpegImage", "PreprocessedFrame", "Preprocessor", "RawImage"]


class Preprocessor:
    """Turns one frame's bytes into a normalized tensor for one model."""

    def __init__(
        self,
        config: Preprocessing,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_frame_bytes: int = 8 << 20,
        limits: FrameLimits | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.limits = limits or FrameLimits(max_frame_bytes=max_frame_bytes)
        self.max_frame_bytes = self.limits.max_frame_bytes
        std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
        mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = (1.0 / (255.0 * std)).to(device)
        self._shift = (-mean / std).to(device)
        self._interpolation = InterpolationMode(config.interpolation)
        self._local = threading.local()  # CUDA: each calling thread's own stream

    def __call__(self, image: FrameImage) -> PreprocessedFrame:
        if self.device.type != "cuda":
            return self._preprocess(image)
        # On CUDA each calling thread (the daemon's stream threads) works on a stream of
        # its own, idle when a decode starts. nvJPEG's hardware decoder (A100, H100,
        # H200) can write its output before work queued on the caller's stream has run
        # (pytorch/vision#9606, meta-pytorch/torchcodec#1634), and PyTorch's allocator
        # hands out blocks freed on a stream with reads still queued: on the inference
        # thread's stream, that would be a forward pass's activations. A private,
        # synchronized stream only ever hands the decoder blocks nothing still reads.
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            stream.synchronize()
            return self._preprocess(image, stream)

    def _preprocess(self, image: FrameImage, stream: torch.cuda.Stream | None = None) -> PreprocessedFrame:
        t0 = time.perf_counter()
        pixels = self.decode(image)
        t1 = time.perf_counter()
        tensor = self.transform(pixels, bgr=isinstance(image, RawImage) and image.bgr)
        if stream is not None:
            stream.synchronize()  # complete before the inference thread's stream reads it
        t2 = time.perf_counter()
        return PreprocessedFrame(tensor, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def decode(self, image: FrameImage) -> torch.Tensor:
        """uint8 3 x H x W on the target device: RGB, or BGR for a raw BGR frame (swapped after the crop)."""
        if isinstance(image, JpegImage):
            # The declared size, from the header, before libjpeg allocates the whole output.
            self.limits.check_jpeg(image.data, self.config.resize_size)
            return self._decode_jpeg(image.data)
        self.limits.check_bytes(len(image.data))
        self.limits.check_raw(image.height, image.width, self.config.resize_size)
        return self._unpack_raw(image)

    def _decode_jpeg(self, data: bytes) -> torch.Tensor:
        if not data.startswith(b"\xff\xd8"):
            raise InvalidFrame("image.jpeg does not start with a JPEG SOI marker (FF D8); is it a JPEG?")
        if self.device.type != "cuda" and simplejpeg is not None:
            # libjpeg-turbo, strict: a warning ("Corrupt JPEG data: premature end of data segment")
            # means the decoder filled damaged blocks with grey, and torchvision's decode_jpeg only
            # prints it to stderr and returns the partly grey image. A damaged frame is an error,
            # never a prediction. Same pixels as torchvision's decoder (both islow IDCT).
            try:
                hwc = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            except ValueError as exc:
                raise InvalidFrame(f"image.jpeg could not be decoded (damaged or truncated): {exc}") from exc
            return torch.from_numpy(np.asarray(hwc)).permute(2, 0, 1)  # channels-last view, as raw frames
        encoded = torch.frombuffer(data, dtype=torch.uint8)  # read in place; the decoder only reads
        try:
            if self.device.type == "cuda":
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise InvalidFrame(f"image.jpeg could not be decoded: {_first_line(exc)}") from exc

    def _unpack_raw(self, image: RawImage) -> torch.Tensor:
        h, w = image.height, image.width
        expected = h * w * 3
        if len(image.data) != expected:
            raise InvalidFrame(
                f"raw frame of {h}x{w}x3 needs {expected} bytes, got {len(image.data)}; "
                f"send height*width*3 bytes of interleaved uint8 pixels"
            )
        # An HWC view of the caller's buffer, no copy: resize reads it as channels-last, its
        # fast uint8 path, and writes a new tensor.
        hwc = torch.frombuffer(image.data, dtype=torch.uint8).view(h, w, 3)
        return hwc.permute(2, 0, 1).to(self.device, non_blocking=True)

    def transform(self, pixels: torch.Tensor, *, bgr: bool = False) -> torch.Tensor:
        """uint8 3xHxW -> normalized model input 3 x crop x crop (RGB)."""
        cfg = self.config
        resized = F.resize(pixels, [cfg.resize_size], interpolation=self._interpolation, antialias=True)
        cropped = F.center_crop(resized, [cfg.crop_size, cfg.crop_size])
        if bgr:  # swap channels on the cropped frame: a camera frame is often several times larger
            cropped = cropped.flip(0)
        out = torch.addcmul(self._shift, cropped, self._scale)  # uint8 * float32 -> float32, one pass
        return out.to(self.dtype)


def _first_line(exc: BaseException) -> str:
    """libjpeg's reason without torchvision's C++ file and line prefix."""
    lines = str(exc).strip().splitlines()
    return lines[-1].rsplit(", ", 1)[-1] if lines else type(exc).__name__
