"""Calibration and held-out frames, through exactly the daemon's preprocessing.

Sources: a folder of images (JPEG files go through the daemon's own JPEG
decoder byte for byte; a file that cannot be read or decoded is skipped with a
warning naming it, as ``edgeclient --images`` answers it with an error), a
video file (frames sampled evenly across it, via the client's VideoCapture
source), or ``synthetic`` when asked for by name. The
last quarter of the sampled frames is held out for the fidelity report and
never calibrates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeinfer.quant.sources import IMAGE_SUFFIXES, check_source
from edgeinfer.server.errors import InvalidFrame
from edgeinfer.server.preprocess import FrameImage, JpegImage, Preprocessor, RawImage
from edgeinfer.server.registry import Preprocessing

__all__ = ["CalibrationSet", "load_frames", "offline_preprocessor", "read_image"]

MIN_FRAMES = 4
_log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    calibration: torch.Tensor  # N x 3 x H x W, preprocessed
    held_out: torch.Tensor
    source: str

    def batches(self, size: int = 8, limit: int | None = None) -> Iterator[torch.Tensor]:
        """The calibration frames in batches; with ``limit``, that many spread evenly over them."""
        frames = self.calibration
        if limit is not None and len(frames) > limit:
            frames = frames[torch.linspace(0, len(frames) - 1, limit).round().long()]
        for i in range(0, len(frames), size):
            yield frames[i : i + size]


def offline_preprocessor(config: Preprocessing) -> Preprocessor:
    """The daemon's preprocessing on the CPU, without its frame-size limit (files are trusted here)."""
    return Preprocessor(config, device=torch.device("cpu"), max_frame_bytes=1 << 30)


def _raw(bgr: np.ndarray) -> RawImage:
    h, w, _ = bgr.shape
    return RawImage(h, w, np.ascontiguousarray(bgr).tobytes(), bgr=True)


def read_image(path: Path) -> FrameImage:
    """A file as the daemon would receive it: JPEG bytes as they are, other formats as raw RGB."""
    data = path.read_bytes()
    if data[:2] == b"\xff\xd8":
        return JpegImage(data)  # the daemon's own decode path, byte for byte
    from torchvision.io import ImageReadMode, decode_image

    rgb = decode_image(str(path), mode=ImageReadMode.RGB).permute(1, 2, 0).contiguous().numpy()
    return RawImage(rgb.shape[0], rgb.shape[1], rgb.tobytes(), bgr=False)


def _images(folder: Path, count: int, preprocessor: Preprocessor) -> list[torch.Tensor]:
    """Up to ``count`` files spread evenly over the folder, preprocessed; one that cannot be read or
    decoded is skipped with a warning naming it (and why), and the count of skipped ones is said."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))]
    tensors = []
    for path in picked:
        try:
            tensors.append(preprocessor(read_image(path)).tensor)
        except OSError as exc:
            _log.warning("skipped %s: cannot be read (%s)", path, exc.strerror or exc)
        except InvalidFrame as exc:  # the daemon's JPEG decoder: truncated, damaged
            _log.warning("skipped %s: %s", path, str(exc.details).removeprefix("image.jpeg "))
        except RuntimeError:  # torchvision's decoder, for other formats: its C++ text says nothing more
            _log.warning("skipped %s: not an image torchvision can decode", path)
    if len(tensors) < len(picked):
        _log.warning("skipped %d of %d files under %s", len(picked) - len(tensors), len(picked), folder)
    return tensors


def _video(path: Path, count: int) -> list[FrameImage]:
    from edgeinfer.media.sources import capture_frames

    # Keep every `stride`-th frame; when 2*count are kept, drop every other one and
    # double the stride. Memory stays at 2*count frames however long the video is,
    # and what is kept stays evenly spread over all of it.
    frames: list[np.ndarray] = []
    stride = 1
    for i, frame in enumerate(capture_frames(path, fps=0)):
        if i % stride == 0:
            frames.append(frame)
            if len(frames) >= 2 * count:
                frames, stride = frames[::2], stride * 2
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    picked = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [_raw(frames[i]) for i in picked]


def _synthetic(count: int, seed: int) -> list[FrameImage]:
    from edgeinfer.media.sample import synthetic_frame

    rng = np.random.default_rng(seed)
    out: list[FrameImage] = []
    for _ in range(count):
        frame = synthetic_frame(int(rng.integers(0, 1000)), 320, 240).astype(np.int16)
        frame += rng.integers(-40, 40, frame.shape, dtype=np.int16)  # texture, not flat colour
        out.append(_raw(np.clip(frame, 0, 255).astype(np.uint8)))
    return out


def load_frames(
    source: str | Path, preprocessor: Preprocessor, *, count: int = 64, held_out_fraction: float = 0.25, seed: int = 0
) -> CalibrationSet:
    """``count`` frames from ``source`` (folder, video or 'synthetic'), preprocessed and split."""
    check_source(source)
    path = Path(source)
    if str(source) == "synthetic":
        frames, label = [preprocessor(i).tensor for i in _synthetic(count, seed)], "synthetic"
    elif path.is_dir():
        frames, label = _images(path, count, preprocessor), f"images:{path}"
    else:
        frames, label = [preprocessor(i).tensor for i in _video(path, count)], f"video:{path}"
    if len(frames) < MIN_FRAMES:
        raise ValueError(f"{label} gave {len(frames)} usable frames; calibration needs at least {MIN_FRAMES}")
    tensors = torch.stack(frames)
    n_held = max(1, round(len(tensors) * held_out_fraction))
    return CalibrationSet(tensors[:-n_held], tensors[-n_held:], label)
