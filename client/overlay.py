"""Draws a frame's answer onto it and writes annotated video (``edgeclient --save``)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeinfer.client.results import FrameResult, percent
from edgeinfer.media.cv import require_cv2

__all__ = ["AnnotatedVideoWriter", "annotate", "caption", "letterbox"]


def caption(result: FrameResult) -> str:
    if result.prediction:
        top = result.prediction.top1
        latency = f" {result.latency_ms:.0f} ms" if result.latency_ms is not None else ""
        return f"{top.label} {percent(top.probability)}{latency}"
    if result.dropped is not None:
        return "dropped"
    return f"error: {result.error_code.name if result.error_code else ''}"


def annotate(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of the BGR ``image`` with the top-1 label and latency in its corner."""
    cv2 = require_cv2()
    out = image.copy()
    text = caption(result)
    scale = max(0.4, out.shape[1] / 900)
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (w + 10, h + base + 10), (0, 0, 0), -1)
    color = (255, 255, 255) if result.prediction else (0, 160, 255)
    cv2.putText(out, text, (5, h + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return out


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit ``width`` x ``height`` (aspect kept), centered on black."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    cv2 = require_cv2()
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return out


class AnnotatedVideoWriter:
    """MP4 (mp4v) writer that opens on the first frame, when the size is known.

    A video has one frame size and OpenCV's writer silently skips a frame of any other:
    so every later frame is letterboxed to the first one's size, and ``frames`` counts
    what went into the file.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps if fps > 0 else 30.0
        self._writer: Any = None
        self._size = (0, 0)
        self.frames = 0

    def write(self, image: np.ndarray, result: FrameResult) -> None:
        cv2 = require_cv2()
        if self._writer is None:
            h, w = image.shape[:2]
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write video to {self.path}")
        self._writer.write(annotate(letterbox(image, *self._size), result))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
