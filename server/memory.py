"""The daemon's heap: how many malloc arenas it keeps, and giving freed pages back.

Frames are allocated on many threads (gRPC's, each stream's reader, the inference
thread). glibc gives each thread that allocates under contention an arena of its own,
up to 8 per core, and an arena keeps what was freed in it: after a burst of streams
the daemon's RSS stayed ~120 MB (15%) over its start although every stream had ended
(bench/soak.py, 16 streams beside hostile clients, 2 minutes). With two arenas it came
back to within 2% of its start, and after rounds of big-frame streams (bench/memory_rounds.py)
ended 7-13% over it instead of 35%, with four about the same; malloc_trim after streams
end returns what a free left whole.
The price: the model's own allocations contend for fewer arenas; int8 SqueezeNet
served ~4% fewer frames per second on 2 cores (bench/results/README.md), which
``edgeserver --malloc-arenas 0`` (glibc's own count) buys back.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

__all__ = ["DEFAULT_MALLOC_ARENAS", "cap_malloc_arenas", "release_freed_memory"]

log = logging.getLogger(__name__)

DEFAULT_MALLOC_ARENAS = 4  # edgeserver --malloc-arenas
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # glibc; musl and macOS have neither
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def cap_malloc_arenas(arenas: int = DEFAULT_MALLOC_ARENAS) -> bool:
    """Let glibc make at most ``arenas`` malloc arenas from now on (call it before threads start).

    The MALLOC_ARENA_MAX environment variable, when set, wins: glibc has read it already.
    Returns whether the cap was set here.
    """
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def release_freed_memory() -> None:
    """Give the freed heap pages of every malloc arena back to the system (glibc's ``malloc_trim``).

    glibc raises its mmap threshold after the first large free: a 3 MB raw frame then
    comes from an arena, and once freed stays in the process's RSS until trimmed.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
