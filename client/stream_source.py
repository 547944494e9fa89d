"""`edgeclient`'s frame source: camera, video or images, and what --save draws on."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import numpy as np

from edgeinfer.client.sources import ImageFile, capture_frames, image_files
from edgeinfer.media.sources import SourceError as MediaSourceError

__all__ = ["describe", "file_name", "open_source", "pixels"]


def open_source(args: argparse.Namespace, on_gap: Callable[[str], None]) -> Iterator[np.ndarray | ImageFile]:
    if args.camera is not None:
        return capture_frames(args.camera, fps=args.fps, on_gap=on_gap)
    if args.video is not None:
        return capture_frames(args.video, fps=args.fps, on_gap=on_gap)
    return image_files(args.images, fps=args.fps)


def describe(args: argparse.Namespace) -> str:
    """The source as the user named it, for a message."""
    if args.camera is not None:
        return f"camera {args.camera}"
    if args.video is not None:
        return f"video {args.video}"
    return f"images {args.images}"


def file_name(item: np.ndarray | ImageFile) -> str | None:
    """The file an image frame came from (--images), for its answer; None for a camera's or a video's."""
    return str(item.path) if isinstance(item, ImageFile) else None


def pixels(item: np.ndarray | ImageFile) -> np.ndarray:
    """The frame to draw on for --save (an image file is decoded for it; a bad one becomes black)."""
    if isinstance(item, np.ndarray):
        return item
    from edgeinfer.media.images import decode_image

    try:
        return decode_image(item.read(), name=str(item.path))
    except MediaSourceError:  # the frame's own error line says why
        return np.zeros((240, 320, 3), np.uint8)
