"""The frame sources of :mod:`edgeinfer.media`, raising the client's :class:`SourceError`.

Same functions, same arguments; only the error differs, so that one
``except EdgeInferError`` catches a missing camera as well as a failed call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edgeinfer.client.errors import as_client_error
from edgeinfer.media import sources as _media
from edgeinfer.media.sources import ImageFile, paced

__all__ = ["ImageFile", "capture_frames", "image_files", "image_frames", "paced"]

T = TypeVar("T")


def _translated(source: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    @functools.wraps(source)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[T]:
        try:
            frames = source(*args, **kwargs)  # image_frames checks its path at once
        except _media.SourceError as exc:
            raise as_client_error(exc) from exc
        return _iterate(frames)

    return wrapper


def _iterate(frames: Iterator[T]) -> Iterator[T]:
    try:
        yield from frames
    except _media.SourceError as exc:
        raise as_client_error(exc) from exc


capture_frames = _translated(_media.capture_frames)
image_frames = _translated(_media.image_frames)
image_files = _translated(_media.image_files)
