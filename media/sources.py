"""Frame sources: a camera, a video file or stream URL, image files, or arrays you already have.

A camera and a video file are the same code: OpenCV's ``VideoCapture(0)`` and
``VideoCapture("clip.mp4")``. A video plays at its own frame rate, like a
camera, unless ``fps`` says otherwise; ``fps=0`` reads as fast as it can.
A camera or a stream URL that stops delivering is reopened with backoff
(jetson-inference's sources do the same); a video file ends at its end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.media.cv import require_cv2

__all__ = [
    "IMAGE_SUFFIXES",
    "REOPEN_BACKOFF_S",
    "ImageFile",
    "SourceError",
    "capture_frames",
    "image_files",
    "image_frames",
    "paced",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
REOPEN_BACKOFF_S = (0.25, 4.0)  # first wait before reopening a source, and the most it grows to (doubling)


class SourceError(RuntimeError):
    """A camera or file that cannot be opened or read.

    The client raises it as ``edgeinfer.client.SourceError``, a subclass of this one and of
    ``EdgeInferError``, so one ``except EdgeInferError`` catches everything the client raises.
    """


def _is_stream_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def capture_frames(
    source: int | str | Path,
    *,
    fps: float | None = None,
    reopen: bool | None = None,
    on_gap: Callable[[str], None] | None = None,
    give_up_after: float | None = None,
) -> Iterator[np.ndarray]:
    """BGR frames from a camera index, a video path or a stream URL (rtsp://, http://), paced like the source.

    ``fps=None``: a video plays at its native rate, a camera as it delivers.
    ``fps>0``: at most that rate. ``fps=0``: as fast as frames can be read.
    ``reopen`` (default: on for cameras and stream URLs, off for files): when frames stop
    coming, release the device and open it again, waiting 0.25 s, 0.5 s, ... up to 4 s
    between tries; ``on_gap(message)`` is called once when each gap starts, and
    ``give_up_after`` seconds without a frame raise :class:`SourceError` (None: never).
    A source that cannot be opened at all fails at once, gap or not.
    """
    cv2 = require_cv2()
    is_camera = isinstance(source, int)
    target: int | str = source if is_camera else str(source)
    is_url = not is_camera and _is_stream_url(str(target))
    if not is_camera and not is_url and not Path(target).exists():
        raise SourceError(f"video file {target} does not exist")
    what = f"camera {source}" if is_camera else f"stream {source}" if is_url else f"video {source}"
    if reopen is None:
        reopen = is_camera or is_url
    capture = _open(cv2, target)
    if not capture.isOpened():
        raise SourceError(f"OpenCV cannot open {what}" + (" (is it connected? try another index)" if is_camera else ""))
    if fps is None and not is_camera:
        native = capture.get(cv2.CAP_PROP_FPS)
        fps = native if native and native > 0 else 30.0
    holder = [capture]

    def frames() -> Iterator[np.ndarray]:
        while True:
            yield from _read(holder[0])
            if not reopen:
                return
            if on_gap is not None:
                on_gap(f"{what} stopped delivering frames; reopening it")
            holder[0] = _reopen(cv2, holder[0], target, what, give_up_after)

    try:
        yield from paced(frames(), fps) if fps else frames()
    finally:
        holder[0].release()


def _open(cv2: Any, target: int | str) -> Any:
    """``VideoCapture(target)`` with OpenCV's own log quiet while it opens: a camera or stream that is not
    there is said once, by our SourceError, not by two of videoio's warnings first. An
    ``OPENCV_LOG_LEVEL`` in the environment is someone's choice and wins."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)  # None: a build (or a test's fake) without it
    if log is None or "OPENCV_LOG_LEVEL" in os.environ:
        return cv2.VideoCapture(target)
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(target)
    finally:
        log.setLogLevel(before)


def _reopen(cv2: Any, capture: Any, target: int | str, what: str, give_up_after: float | None) -> Any:
    """Release ``capture`` and open ``target`` again with doubling waits, until it delivers a frame."""
    capture.release()
    started = time.monotonic()
    wait, most = REOPEN_BACKOFF_S
    while True:
        if give_up_after is not None and time.monotonic() - started + wait > give_up_after:
            raise SourceError(f"{what} delivered no frame for {give_up_after:g} s; gave up reopening it")
        time.sleep(wait)
        wait = min(2 * wait, most)
        capture = _open(cv2, target)
        if capture.isOpened():
            return capture
        capture.release()


def _read(capture: Any) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


@dataclass(frozen=True)
class ImageFile:
    """An image file not read yet: the client sends a JPEG's bytes as they are and decodes the rest."""

    path: Path

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from exc


def _image_paths(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return files
    if path.is_file():
        return [path]
    raise SourceError(f"{path} does not exist")


def image_files(path: str | Path, *, fps: float | None = None) -> Iterator[ImageFile]:
    """One image file or every image in a folder (sorted by name), unread: a bad file fails alone, later."""
    files = [ImageFile(p) for p in _image_paths(path)]
    return paced(files, fps) if fps else iter(files)


def image_frames(path: str | Path, *, fps: float | None = None) -> Iterator[np.ndarray]:
    """BGR frames from one image file or every image in a folder (sorted by name)."""
    cv2 = require_cv2()
    files = _image_paths(path)

    def read() -> Iterator[np.ndarray]:
        for f in files:
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"OpenCV cannot read image {f}")
            yield image

    return paced(read(), fps) if fps else read()


def paced(frames: Iterable[Any], fps: float) -> Iterator[Any]:
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
