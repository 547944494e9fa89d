"""Runs `edgeserver` with torch and torchvision made unimportable, recording any attempt.

    python tests/server/torch_blocked.py RECORD [edgeserver arguments...]

Stands for a board where torch is not installed, and proves more than its absence would: a
daemon that tried `import torch` behind a try/except would pass on a board and still import it
on a workstation. Every attempt is written to RECORD; the test asserts RECORD stays empty.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from pathlib import Path
from typing import Any

BLOCKED = ("torch", "torchvision", "torchao")


class Blocker(MetaPathFinder):
    def __init__(self, record: Path) -> None:
        self.record = record

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".")[0] in BLOCKED:
            with open(self.record, "a") as f:
                f.write(f"{fullname}\n")
            raise ImportError(f"{fullname} is blocked: this stands for a board without torch")
        return None


if __name__ == "__main__":
    record = Path(sys.argv[1])
    record.write_text("")
    sys.meta_path.insert(0, Blocker(record))
    from edgeinfer.server.cli import main

    sys.exit(main(sys.argv[2:]))
