"""`edgeserver --threads`: all cores against one below, for a camera stream on a (possibly busy) board.

Issue 25 measured, on a busy 2-core machine, a 30-frame camera stream at p50 1,103 ms with 27 of 30 frames
dropped when the daemon used every core, and p50 63 ms with 4 dropped at `--threads 1`. This bench runs
that comparison in one go, interleaved (A, B, A, B, ...), each round a fresh daemon: one stream of
``--frames`` synthetic 640x480 frames at ``--fps`` with the camera policy (`latest`), and, with ``--busy N``,
N processes spinning on the CPU meanwhile (the rest of a robot's software). It prints per-round and median
latency p50 / p95 and frames dropped.

    python -m bench.threads_default --rounds 3 --frames 30 --fps 15 --busy 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.daemon import DaemonProcess
from bench.stats import log, pct
from edgeinfer.client import EdgeClient

__all__ = ["main", "run_round"]

_SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    sum(range(10000))\n"


def _frames(n: int, fps: float) -> Iterator[np.ndarray]:
    """A camera's frames, paced at ``fps``: smooth gradients with a moving bar (JPEGs of camera-like size)."""
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    start = time.perf_counter()
    for i in range(n):
        frame = base.copy()
        frame[:, (i * 20) % 600 : (i * 20) % 600 + 40] = (30 * i) % 256
        delay = start + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frame


def run_round(threads: int, *, frames: int, fps: float, model: str, busy: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as repo:
        daemon = DaemonProcess([model], Path(repo), threads, None, 8)
        spinners = [subprocess.Popen([sys.executable, "-c", _SPIN.format(s=frames / fps + 30)]) for _ in range(busy)]
        try:
            with EdgeClient(f"127.0.0.1:{daemon.port}", timeout=60) as client:
                results = list(client.stream(_frames(frames, fps), model, drop_policy="latest", timeout=120))
        finally:
            for p in spinners:
                p.kill()
                p.wait()
            daemon.stop()
    latencies = [r.latency_ms for r in results if r.kind == "prediction" and r.latency_ms is not None]
    return {
        "threads": threads,
        "p50_ms": pct(latencies, 50),
        "p95_ms": pct(latencies, 95),
        "answered": len(latencies),
        "dropped": sum(r.kind == "dropped" for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--model", default="squeezenet")
    p.add_argument("--busy", type=int, default=0, help="CPU-spinning processes beside the daemon (default: 0)")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    settings = sorted({cores, max(1, cores - 1)}, reverse=True)
    rows = []
    for r in range(args.rounds):
        for threads in settings if r % 2 == 0 else settings[::-1]:
            row = run_round(threads, frames=args.frames, fps=args.fps, model=args.model, busy=args.busy)
            row["round"] = r
            log(f"round {r} --threads {threads}: p50 {row['p50_ms']:.0f} ms, dropped {row['dropped']}")
            rows.append(row)
    print(f"{args.model}, {args.frames} frames at {args.fps:g} fps (latest), {cores} cores, {args.busy} busy")
    print(f"{'--threads':>10} {'round':>5} {'p50 ms':>8} {'p95 ms':>8} {'answered':>8} {'dropped':>7}")
    for row in rows:
        print(
            f"{row['threads']:>10} {row['round']:>5} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
            f"{row['answered']:>8} {row['dropped']:>7}"
        )
    for threads in settings:
        mine = [row for row in rows if row["threads"] == threads]
        p50 = statistics.median(row["p50_ms"] for row in mine)
        dropped = statistics.median(row["dropped"] for row in mine)
        print(f"median --threads {threads}: p50 {p50:.1f} ms, dropped {dropped:g} of {args.frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
