"""bench/client_resize.py on its tiny setting: every size and mode ran, and the byte figures hold.

Timings are never asserted; bytes on the wire are (the frames and the encoder are deterministic).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_client_resize_bench_tiny(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.client_resize", "--tiny", "--out", str(tmp_path)]
    cmd += ["--repository", str(tmp_path / "repo")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "client_resize.json").read_text())
    assert result["resize_size"] == 256
    sizes = ["640x480", "1280x720", "1920x1080"]
    assert [(r["size"], r["mode"]) for r in result["rows"]] == [(s, m) for s in sizes for m in ("limit", "auto", "off")]
    for r in result["rows"]:
        assert r["fps"] > 0 and r["p50_ms"] > 0
        if r["mode"] != "limit":
            assert r["daemon_cpu_ms_per_frame"] is not None and r["daemon_cpu_ms_per_frame"] >= 0
            assert r["daemon_work_ms_per_frame"] > 0
    for size in sizes:
        s = result["summary"][size]
        assert s["frames_compared"] == 4
        assert 0 <= s["top1_agreement_auto_vs_off"] <= 1 and s["top5_overlap_auto_vs_off"] >= 0.5
        assert 0 <= s["top1_agreement_int8_vs_fp32"] <= 1 and 0 <= s["top5_overlap_int8_vs_fp32"] <= 1
    # A 1280x720 frame shrunk to 455x256 before encoding: at least 4x fewer bytes on the wire.
    assert result["summary"]["1280x720"]["bytes_off_over_auto"] >= 4
    assert result["summary"]["1920x1080"]["bytes_off_over_auto"] > result["summary"]["640x480"]["bytes_off_over_auto"]
    assert (tmp_path / "client_resize.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
