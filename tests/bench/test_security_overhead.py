"""bench/security_overhead.py runs on a tiny setting and measures every setting (timings never asserted)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_security_overhead_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "bench"))  # bench/ is no package; run in-process, torch is loaded already
    try:
        bench = importlib.import_module("security_overhead")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "out.json"
    assert bench.main(["--rounds", "1", "--calls", "5", "--connects", "1", "--sha-mb", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    settings = ["plaintext", "plaintext + token", "TLS", "TLS + token", "mTLS + token"]
    assert [r["setting"] for r in result["rows"]] == settings
    assert all(r["warm_call_ms"] > 0 and r["new_connection_ms"] > 0 for r in result["rows"])
    assert result["sha256_mb_per_s"] > 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in settings) and "SHA-256:" in printed
