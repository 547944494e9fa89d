"""Prometheus metrics (served on --metrics-port, Triton-style, off by default)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTIVE_STREAMS",
    "CONNECTIONS_OVER_PEER_CAP",
    "FRAMES",
    "FRAME_LATENCY",
    "STREAMS_TIMED_OUT",
    "UNAUTHENTICATED",
]

FRAMES = Counter(
    "edgeinfer_frames_total",
    "Frames answered, by model, precision and outcome (predicted, dropped, error).",
    ["model", "precision", "outcome"],
)
FRAME_LATENCY = Histogram(
    "edgeinfer_frame_latency_seconds",
    "Server-side time from frame received to answer ready, predicted frames only.",
    ["model", "precision"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
# "livesum": with --workers the supervisor's /metrics adds up the live workers' streams.
ACTIVE_STREAMS = Gauge("edgeinfer_active_streams", "Streams open now.", multiprocess_mode="livesum")
UNAUTHENTICATED = Counter(
    "edgeinfer_unauthenticated_calls_total", "Calls refused for a missing or wrong bearer token (--token-file)."
)
STREAMS_TIMED_OUT = Counter(
    "edgeinfer_streams_timed_out_total",
    "Streams ended for sending no config in time (reason=config) or for doing nothing (reason=idle).",
    ["reason"],
)
CONNECTIONS_OVER_PEER_CAP = Counter(
    "edgeinfer_connections_over_peer_cap_total",
    "TCP connections closed for being over --max-connections-per-peer (a client's newest, within a sweep).",
)
