"""A robot installs only the base package: the client must not pull in torch."""

from __future__ import annotations

import subprocess
import sys


def test_client_import_does_not_import_torch() -> None:
    code = (
        "import sys, edgeinfer.client, edgeinfer.client.cli, edgeinfer.client.overlay;"
        "heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules);"
        "print(','.join(heavy) or 'clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean", out.stdout + out.stderr
