"""bench/board.py's and bench/aarch64_compare.py's arithmetic, and one tiny board run (its JSON, not its timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.aarch64_compare import compare
from bench.board import agreement, photo_frames
from tests.bench.test_benches import run_bench


def test_photo_frames_are_distinct_real_crops() -> None:
    frames = photo_frames(12, seed=3)
    assert len(frames) == 12 and all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
    assert {f.shape[:2] for f in frames} <= {(480, 640), (600, 800), (720, 1280), (640, 480)}
    assert len({f.tobytes()[:4096] for f in frames}) == 12
    np.testing.assert_array_equal(photo_frames(3, seed=3)[2], frames[2])  # seeded


def test_agreement_counts_top1_and_top5_overlap() -> None:
    a = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]
    b = [[1, 3, 2, 4, 6], [8, 9, 7, 6, 5]]
    assert agreement(a, b) == {"frames": 2, "top1_agreement": 0.5, "top5_overlap": 0.9}


def test_compare_tells_a_near_tie_from_a_difference() -> None:
    x = [[(1, 0.5), (2, 0.3001), (3, 0.3), (4, 0.1), (5, 0.05)]]
    y = [[(1, 0.5), (3, 0.3002), (2, 0.3001), (4, 0.1), (5, 0.05)]]
    out = compare(x, y)
    assert (out["top1_equal"], out["top5_equal_in_order"], out["top5_equal_as_set"]) == (1, 0, 1)
    assert out["rows"][0]["largest_swapped_gap"] == pytest.approx(1e-4)


@pytest.mark.slow
def test_board_tiny(tmp_path: Path) -> None:
    run_bench(
        "board", "--models", "squeezenet1_1", "--rounds", "1", "--frames", "12", "--distinct", "8",
        "--latency-frames", "3", "--out", str(tmp_path),
    )  # fmt: skip
    result = json.loads((tmp_path / "board.json").read_text())
    row = result["models"]["squeezenet1_1"]
    for runtime in ("torch", "onnxruntime"):
        assert row[runtime]["fps"]["median"] > 0 and row[runtime]["rss_mb"]["median"] > 0
        assert row[runtime]["serving_s"]["median"] > 0
    assert row["agreement"]["frames"] == 8 and 0 <= row["agreement"]["top5_overlap"] <= 1
    assert row["preprocessing"]["frames"] == 8 and row["preprocessing"]["mean_abs_diff"] < 0.05
