"""Calibration sampling: evenly spread over a video, with bounded memory."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.media import sources
from edgeinfer.quant.calibration import _video


def test_long_video_is_sampled_evenly_without_keeping_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    refs: list[weakref.ref[np.ndarray]] = []
    peak = [0]

    def frames(path: object, fps: float | None = None) -> Iterator[np.ndarray]:
        for i in range(1000):
            frame = np.zeros((2, 2, 3), np.uint8)
            frame[0, 0, :2] = divmod(i, 256)  # the frame's index, readable from the raw bytes
            refs.append(weakref.ref(frame))
            peak[0] = max(peak[0], sum(r() is not None for r in refs))
            yield frame

    monkeypatch.setattr(sources, "capture_frames", frames)
    picked = _video(Path("long.mp4"), 8)
    indices = [img.data[0] * 256 + img.data[1] for img in picked]  # type: ignore[union-attr]
    assert len(indices) == 8 and indices[0] == 0
    assert indices[-1] >= 800  # spread over the whole clip, not its start
    assert min(b - a for a, b in itertools.pairwise(indices)) >= 64
    assert peak[0] <= 2 * 8 + 1  # never more than 2 x count frames held (plus the one being read)


def test_short_clip_picks_like_before(calib_clip: Path) -> None:
    picked = _video(calib_clip, 32)  # 40 frames: fewer than 2 x 32, so nothing is decimated
    assert len(picked) == 32
