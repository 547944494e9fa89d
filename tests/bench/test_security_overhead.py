"""bench/security_overhead.py runs on a tiny setting and measures every setting (timings never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import security_overhead


def test_security_overhead_tiny(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["--rounds", "1", "--calls", "5", "--connects", "1", "--sha-mb", "4", "--json", str(out)]
    assert security_overhead.main(args) == 0  # in process: torch is loaded already
    result = json.loads(out.read_text())
    settings = ["plaintext", "plaintext + token", "TLS", "TLS + token", "mTLS + token"]
    assert [r["setting"] for r in result["rows"]] == settings
    assert all(r["warm_call_ms"] > 0 and r["new_connection_ms"] > 0 for r in result["rows"])
    assert result["sha256_mb_per_s"] > 0
