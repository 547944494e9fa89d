"""A synthetic sample clip, so demos and tests need no camera and no download.

python -m edgeinfer.media.sample clip.mp4 --frames 90
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgeinfer.media.cv import require_cv2

__all__ = ["synthetic_frame", "write_sample_clip"]


def synthetic_frame(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A BGR frame: a gradient background and a disc that moves and changes colour with ``i``."""
    cv2 = require_cv2()
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    frame[..., 1] = (y * 255 // max(1, height - 1)).astype(np.uint8)
    frame[..., 2] = (i * 37) % 256
    center = ((20 + 9 * i) % width, height // 2)
    cv2.circle(frame, center, height // 4, ((i * 50) % 256, 255 - (i * 20) % 256, 128), -1)
    return frame


def write_sample_clip(
    path: str | Path, *, frames: int = 30, fps: float = 30.0, size: tuple[int, int] = (320, 240)
) -> Path:
    """Write an MP4 (mp4v) clip of ``frames`` synthetic frames at ``fps``."""
    cv2 = require_cv2()
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    for i in range(frames):
        writer.write(synthetic_frame(i, *size))
    writer.release()
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a synthetic sample clip (no camera needed).")
    p.add_argument("path", type=Path)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    args = p.parse_args(argv)
    write_sample_clip(args.path, frames=args.frames, fps=args.fps, size=(args.width, args.height))
    print(args.path)


if __name__ == "__main__":
    main()
