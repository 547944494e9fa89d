"""Frame sources: a camera, a video file, image files, or arrays you already have.

A camera and a video file are the same code: OpenCV's ``VideoCapture(0)`` and
``VideoCapture("clip.mp4")``. A video plays at its own frame rate, like a
camera, unless ``fps`` says otherwise; ``fps=0`` reads as fast as it can.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgeinfer.media.cv import require_cv2

__all__ = ["IMAGE_SUFFIXES", "SourceError", "capture_frames", "image_frames", "paced"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class SourceError(RuntimeError):
    """A camera or file that cannot be opened or read."""


def capture_frames(source: int | str | Path, *, fps: float | None = None) -> Iterator[np.ndarray]:
    """BGR frames from a camera index or a video path, paced like the source.

    ``fps=None``: a video plays at its native rate, a camera as it delivers.
    ``fps>0``: at most that rate. ``fps=0``: as fast as frames can be read.
    """
    cv2 = require_cv2()
    is_camera = isinstance(source, int)
    target: int | str = source if is_camera else str(source)
    if not is_camera and not Path(target).exists():
        raise SourceError(f"video file {target} does not exist")
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        what = f"camera {source}" if is_camera else f"video {source}"
        raise SourceError(f"OpenCV cannot open {what}")
    try:
        if fps is None and not is_camera:
            native = capture.get(cv2.CAP_PROP_FPS)
            fps = native if native and native > 0 else 30.0
        frames = _read(capture)
        yield from paced(frames, fps) if fps else frames
    finally:
        capture.release()


def _read(capture: object) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()  # type: ignore[attr-defined]
        if not ok:
            return
        yield frame


def image_frames(path: str | Path, *, fps: float | None = None) -> Iterator[np.ndarray]:
    """BGR frames from one image file or every image in a folder (sorted by name)."""
    cv2 = require_cv2()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(f"{path} does not exist")

    def read() -> Iterator[np.ndarray]:
        for f in files:
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"OpenCV cannot read image {f}")
            yield image

    return paced(read(), fps) if fps else read()


def paced(frames: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """Yield frames no faster than ``fps``, on a fixed schedule (no drift)."""
    period = 1.0 / fps
    next_at = time.perf_counter()
    for frame in frames:
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.perf_counter()  # fell behind: restart the schedule, don't burst
        next_at += period
        yield frame
