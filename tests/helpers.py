"""Test data made on the spot: frames, JPEGs and video clips (no downloads)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeinfer.media.sample import synthetic_frame, write_sample_clip

__all__ = ["SMALL_FRAME_LIMIT", "jpeg", "synthetic_frame", "write_video"]

SMALL_FRAME_LIMIT = 512 << 10  # the test daemon's --max-frame-bytes, cheap to cross


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_video(path: Path, frames: int = 30, fps: float = 30.0, size: tuple[int, int] = (320, 240)) -> Path:
    return write_sample_clip(path, frames=frames, fps=fps, size=size)
