"""The benchmarks run on a tiny setting and produce their table, JSON and plot.

Timings are never asserted (the machine is shared and noisy); what is checked is
that every mode ran, counted its frames, and that the outputs exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_serve_bench_tiny(tmp_path: Path) -> None:
    out = run_bench(
        "serve_bench.py",
        "--tiny",
        "--models",
        "squeezenet1_1",
        "--precisions",
        "fp32",
        "int8",
        "--repository",
        str(tmp_path / "repo"),
        "--out",
        str(tmp_path),
    )
    assert "ratios" in out.stdout and "served/limit throughput" in out.stdout and "footprint:" in out.stdout
    assert "squeezenet1_1 int8: round 1/1" in out.stderr  # progress is shown
    result = json.loads((tmp_path / "serve_bench.json").read_text())
    modes = {(r["precision"], r["mode"]) for r in result["rows"]}
    for precision in ("fp32", "int8"):
        for mode in (
            "a model",
            "b limit",
            "c served",
            "c served latency",
            "d 1 streams",
            "d 2 streams",
            "d 2 streams forced",
            "e tcp+jpeg latency",
            "e unix+raw latency",
            "e unix+shm latency",
            "e tcp+jpeg 640x480 latency",
            "e unix+raw 640x480 latency",
            "e unix+shm 640x480 latency",
        ):
            assert (precision, mode) in modes
    assert all(sizes[0] == 1 for sizes in result["batch_sizes"].values())
    assert "batching across streams (daemon's measured batch sizes" in out.stdout
    assert "same host 640x480: p50 (overhead = latency minus inference) tcp+jpeg" in out.stdout
    assert "unix+shm vs tcp+jpeg already encoded" in out.stdout
    ratios = result["summary"]["squeezenet1_1 int8"]
    assert {"unix_shm_vs_tcp_jpeg_p50", "unix_raw_vs_tcp_jpeg_640x480_overhead_saved_ms"} <= set(ratios)
    assert all(r["frames"] > 0 for r in result["rows"] if not r["mode"].endswith("(peer)"))
    assert result["footprint"]["client_imports_torch"] is False
    assert result["footprint"]["daemon_rss_mb"] > 0 and result["footprint"]["daemon_startup_s"] > 0
    assert set(result["summary"]) >= {"squeezenet1_1 fp32", "squeezenet1_1 int8"}
    assert (tmp_path / "serve_bench.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_quant_flows_bench_tiny(tmp_path: Path) -> None:
    out = run_bench(
        "quant_flows.py", "--models", "squeezenet1_1", "--skip-pt2e", "--iterations", "3", "--out", str(tmp_path)
    )
    rows = json.loads((tmp_path / "quant_flows.json").read_text())
    assert [r["variant"] for r in rows] == ["fp32", "int8-fx"]
    assert rows[1]["sqnr_db"] > 20
    assert "int8-fx" in out.stdout and (tmp_path / "quant_flows.png").read_bytes()[:8] == PNG
