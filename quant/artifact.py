"""Writes an int8 artifact's sidecar. The format, and reading it, belong to the daemon
(:mod:`edgeinfer.server.artifacts`): quant/ writes artifacts, server/ reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeinfer.server.artifacts import FORMAT_VERSION, SIDECAR

__all__ = ["write_sidecar"]


def write_sidecar(folder: Path, meta: dict[str, Any]) -> Path:
    path = folder / SIDECAR
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
    return path
