"""Writes an int8 artifact's sidecar. The format, and reading it, belong to the daemon
(:mod:`edgeinfer.server.artifacts`): quant/ writes artifacts, server/ reads them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeinfer.server.artifacts import FORMAT_VERSION, SIDECAR

__all__ = ["staged_folder", "write_sidecar"]


def write_sidecar(folder: Path, meta: dict[str, Any]) -> Path:
    path = folder / SIDECAR
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
    return path


@contextlib.contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder``'s model that becomes ``folder`` when the block completes.

    Nothing half-written is ever in the repository: on an error the temporary folder goes,
    and an artifact already at ``folder`` stays as it was.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the artifact is as readable as any folder
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # only if this run created it and left it empty
        raise
    old = folder.parent / f".{folder.name}.{os.getpid()}.old"
    if folder.exists():
        folder.rename(old)
    stage.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
