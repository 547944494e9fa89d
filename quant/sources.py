"""What ``--calib`` may name, checked without torch: edgequant refuses a wrong one before the model code loads."""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "check_source"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def check_source(source: str | Path) -> None:
    """ValueError (one line) unless ``source`` is 'synthetic', an image folder or a video file."""
    if str(source) == "synthetic":
        return
    path = Path(source)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES):
        return
    if not path.exists():
        raise ValueError(f"calibration source {path} does not exist")
    raise ValueError(f"calibration source {path} is neither an image folder nor a video ({', '.join(VIDEO_SUFFIXES)})")
