"""Defaults of the daemon's limits and timeouts: plain numbers, importable without torch or grpc (``--help``)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONFIG_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIDE",
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
