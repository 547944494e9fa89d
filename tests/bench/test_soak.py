"""bench/soak.py in quick mode: every frame answered, every hostile case reached, nothing INTERNAL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_quick_mode_answers_every_frame_and_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--streams", "3", "--minutes", "0.15", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    result = json.loads(out.read_text())
    assert run.returncode == (0 if result["ok"] else 1), run.stderr[-3000:]
    assert result["frames_sent"] > 0 and result["frames_sent"] == result["frames_answered"]
    assert sum(result["answers"].values()) == result["frames_answered"]
    assert result["internal_or_unknown"] == {}
    assert result["daemon_alive_at_end"] is True and result["daemon_exit_code"] == 0
    cases = result["cases"]
    assert cases["normal"] == {"OK": 3}
    assert set(cases["huge-declared-unary"]) == {"INVALID_ARGUMENT"}
    assert cases["huge-declared"]["INVALID_ARGUMENT"] >= 3  # three refused frames per stream, each answered
    assert set(cases["config-less"]) == {"DEADLINE_EXCEEDED"}
    assert set(cases["garbage-unary"]) == set(cases["garbage-stream"]) == {"INVALID_ARGUMENT"}
    assert set(cases["health"]) == {"SERVING"}
    for key in ("rss_mb", "fds", "threads"):
        assert set(result[key]) == {"start", "minute2", "end"}
        assert all(v > 0 for v in result[key].values())
    assert isinstance(result["rss_growth_pct"], float)
    assert result["samples"] and {"t_s", "rss_mb", "fds", "threads"} <= set(result["samples"][0])
