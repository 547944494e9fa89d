"""bench/security_overhead.py runs on a tiny setting and measures every setting (timings never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_security_overhead_tiny(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "security_overhead.py"),
            *(
                "--rounds",
                "1",
                "--calls",
                "5",
                "--connects",
                "1",
                "--sha-mb",
                "4",
                "--json",
                str(tmp_path / "out.json"),
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    settings = ["plaintext", "plaintext + token", "TLS", "TLS + token", "mTLS + token"]
    assert [r["setting"] for r in result["rows"]] == settings
    assert all(r["warm_call_ms"] > 0 and r["new_connection_ms"] > 0 for r in result["rows"])
    assert result["sha256_mb_per_s"] > 0
    assert all(name in out.stdout for name in settings) and "SHA-256:" in out.stdout
