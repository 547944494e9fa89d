"""Camera and video share one code path (VideoCapture); tests drive it with files."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeinfer.media.sources import SourceError, capture_frames, image_frames, paced
from helpers import synthetic_frame


def test_video_file_yields_every_frame_in_order(clip: Path) -> None:
    frames = list(capture_frames(clip, fps=0))
    assert len(frames) == 30
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    # The disc moves 9 px a frame: consecutive frames differ, so none was repeated.
    assert all(np.abs(a.astype(int) - b.astype(int)).sum() > 0 for a, b in itertools.pairwise(frames))


def test_missing_video_and_camera_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list(capture_frames(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match="cannot open camera 99"):
        list(capture_frames(99))


def test_a_missing_camera_is_said_once_by_the_library_too(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The library, not only edgeclient: OpenCV's own open warnings stay quiet, its log level comes back."""
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    log = cv2.utils.logging
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_WARNING)  # what a program that never touched it has
    try:
        capfd.readouterr()
        with pytest.raises(SourceError, match="cannot open camera 42"):
            list(capture_frames(42))
        assert log.getLogLevel() == log.LOG_LEVEL_WARNING
    finally:
        log.setLogLevel(before)
    assert "WARN" not in capfd.readouterr().err


def test_image_folder_sorted_and_filtered(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), synthetic_frame(i, 40, 30))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = list(image_frames(tmp_path))
    assert len(frames) == 3
    assert np.array_equal(frames[0], synthetic_frame(0, 40, 30))


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        list(image_frames(tmp_path))


def test_paced_keeps_every_frame_and_order() -> None:
    assert list(paced(range(5), fps=1000)) == [0, 1, 2, 3, 4]
