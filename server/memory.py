"""The daemon's heap: how many malloc arenas it keeps, and giving freed pages back.

Frames are allocated on many threads (gRPC's, each stream's reader, the inference
thread). glibc gives each thread that allocates under contention an arena of its own,
up to 8 per core, and an arena keeps what was freed in it. Measured on 2 cores
(bench/results/README.md): after rounds of 20 big-frame streams at once
(bench/memory_rounds.py) the daemon ended 42% over its warm-up RSS with glibc's
arenas and 9% over it with four; over a
10-minute soak beside hostile clients (bench/soak.py) it ended 17% over its start
with glibc's arenas and 4% under it with four. malloc_trim after streams end
returns what a free left whole. The price of fewer arenas: the model's own
allocations contend for them; int8 SqueezeNet served 0-7% fewer frames per second
over several A/B runs (bench/results/frame_cost.md), which ``edgeserver
--malloc-arenas 0`` buys back.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["DEFAULT_MALLOC_ARENAS", "cap_malloc_arenas", "release_freed_memory"]

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
