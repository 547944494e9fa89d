"""Defaults of the daemon's limits and timeouts: plain numbers, importable without torch or grpc (``--help``)."""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_CONFIG_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_PEER",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
    "default_threads",
    "usable_cores",
]

DEFAULT_MAX_FRAME_BYTES = 8 << 20
# A 4K camera (3840 x 2160 = 8.3 MP, DCI 4096 x 2160 = 8.8 MP) and a 12 MP phone
# sensor (4032 x 3024) fit, with room: 4096 x 3072. Decoded, that is 38 MB of RGB.
DEFAULT_MAX_PIXELS = 4096 * 3072
DEFAULT_MAX_SIDE = 8192
# A stream that opens and sends no config within this is ended (server/stream_guard.py).
DEFAULT_CONFIG_TIMEOUT_S = 10.0
# A stream that neither sends a frame nor takes an answer this long is ended; long
# enough for a camera that pauses, short enough that a vanished client's slot returns.
DEFAULT_IDLE_TIMEOUT_S = 120.0
# Connections open at once on each listening address (issue 26: 20,000 idle ones exhausted the
# daemon's file descriptors); a board serves a few robots, a pod a few clients behind round_robin.
DEFAULT_MAX_CONNECTIONS = 512
# Connections one client address may hold open (server/connection_cap.py): a gRPC client opens one per
# target, a robot a few; one peer can take at most 1/16 of --max-connections. Clients behind one NAT or
# proxy share an address: such a daemon raises it (or sets 0, no cap).
DEFAULT_MAX_CONNECTIONS_PER_PEER = 32


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; all of the machine's where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """``--threads``' default: one below the cores, at least 1.

    Measured on a busy 2-core host (bench/threads_default.py, squeezenet, one 15 fps camera stream of 30
    frames, `latest`, three interleaved rounds): all cores p50 354-2,301 ms with 23-27 of 30 dropped,
    one below p50 64-76 ms with 0-3 dropped (issue 25 saw 1,103 ms / 27 against 63 ms / 4). An OpenMP team
    as wide as the machine stalls at every barrier whenever anything else runs on one of its cores; one
    core below leaves room for the client, gRPC and each stream's decode (``--preprocess-on auto``).
    """
    return max(1, usable_cores() - 1)
