"""Test data made on the spot (frames, JPEGs and video clips: no downloads), and the one place tests
start in-process daemons."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeinfer.media.sample import synthetic_frame, write_sample_clip

__all__ = ["SMALL_FRAME_LIMIT", "MakeDaemon", "daemons", "jpeg", "synthetic_frame", "write_video"]

# make_daemon(*models, ready=True, addresses=("127.0.0.1:0",), **Daemon kwargs) -> a started Daemon
MakeDaemon = Callable[..., Any]

SMALL_FRAME_LIMIT = 512 << 10  # the test daemon's --max-frame-bytes, cheap to cross


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_video(path: Path, frames: int = 30, fps: float = 30.0, size: tuple[int, int] = (320, 240)) -> Path:
    return write_sample_clip(path, frames=frames, fps=fps, size=size)


@contextlib.contextmanager
def daemons() -> Iterator[Callable[..., Any]]:
    """The one place tests start daemons: ``start(*models, ready=True, addresses=..., **Daemon kwargs)``
    starts an in-process daemon (listening on 127.0.0.1:0 unless told otherwise), adds the models and
    marks it ready when it has any; every daemon started is stopped (and its models with it) on exit."""
    from edgeinfer.server import Daemon

    started: list[Daemon] = []

    def start(*models: Any, ready: bool = True, addresses: tuple[str, ...] = ("127.0.0.1:0",), **kwargs: Any) -> Any:
        d = Daemon(list(addresses), **kwargs).start()
        started.append(d)
        for m in models:
            d.add_model(m)
        if models and ready:
            d.mark_ready()
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop(grace=0.5)
