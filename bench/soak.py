"""Soak: N normal camera streams for M minutes beside hostile clients, with the daemon's memory watched.

    python -m bench.soak                                   # 16 streams x 10 minutes (the issue 16 figures)
    python -m bench.soak --streams 4 --minutes 0.2         # quick mode (tests/bench/test_soak.py)

Starts its own ``edgeserver`` (SqueezeNet, seeded random weights, loopback) as a
subprocess, so that its RSS, open file descriptors and threads are read from
/proc without the clients in the same process. Normal streams cycle through
JPEG, raw and shared-memory frames and both drop policies (`latest` at --fps,
`all` in lockstep with its answers); every frame sent on them must be answered.
Beside them, hostile clients loop until the end, each on its own thread:

  huge-declared  a 5 KB JPEG declaring 65000x65000, an elongated raw frame: per-frame INVALID_ARGUMENT
  config-less    streams that send nothing: DEADLINE_EXCEEDED after --config-timeout
  abandoned      streams cancelled mid-way, and streams that send big raw frames and then
                 neither send nor read: DEADLINE_EXCEEDED after --idle-timeout
  shm-tricks     a region shrunk and replaced under live frames; keys naming a symlink, a FIFO, a directory
  garbage        random bytes to every method

Every call's status is counted per case; INTERNAL or UNKNOWN anywhere is a failure.
Health is probed once a second. RSS, fds and threads are sampled every 5 s and
reported at start (after warm-up), at minute 2 (or half-way in a shorter run)
and at the end (clients gone, 3 s later); growth is end over minute 2.

Writes one JSON file (--out) and prints a short table. Bounded: every client
stops at the deadline, every call has a timeout, the daemon is stopped with
SIGTERM (and killed if it outlives its drain).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.daemon import DaemonProcess
from bench.soak_clients import BAD, CONFIG_TIMEOUT_S, FRAME, HOSTILE, IDLE_TIMEOUT_S, Tally, normal_stream
from edgeinfer.client import EdgeClient

# -- the daemon under test ------------------------------------------------------------------


class Daemon(DaemonProcess):
    """The shared bench daemon (bench/daemon.py) with the soak's limits, sampled from /proc."""

    def __init__(self, max_streams: int, threads: int) -> None:
        limits = ("--max-streams", str(max_streams), "--config-timeout", str(CONFIG_TIMEOUT_S))
        limits += ("--idle-timeout", str(IDLE_TIMEOUT_S))
        super().__init__(["squeezenet"], Path(tempfile.mkdtemp(prefix="soak-")), threads, None, 8, limits)
        self.target = f"127.0.0.1:{self.port}"

    def sample(self) -> dict[str, float]:
        pid = self.proc.pid
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return {
            "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]),
        }

    def stop(self) -> int | None:  # type: ignore[override]
        """SIGTERM, then its exit status (None: it had to be killed)."""
        super().stop()
        return None if self.proc.returncode == -signal.SIGKILL else self.proc.returncode


# -- the run ---------------------------------------------------------------------------------


def run(streams: int, minutes: float, fps: float, threads: int) -> dict:
    duration = minutes * 60
    checkpoint_s = min(120.0, duration / 2)
    # Room for the normal streams, three config-less ones, and the other hostile clients' streams.
    daemon = Daemon(max_streams=streams + 8, threads=threads)
    tally = Tally()
    samples: list[dict[str, float]] = []
    try:
        # Warm-up: one frame of each kind, so that "start" is the daemon as it serves, not as it loaded.
        with EdgeClient(daemon.target, timeout=60) as c:
            for encoding in ("jpeg", "raw", "shm"):
                list(c.stream([FRAME, FRAME], encoding=encoding, drop_policy="all"))
        start = {"t_s": 0.0, **daemon.sample()}
        t0 = time.monotonic()
        end = t0 + duration
        workers = [
            threading.Thread(target=normal_stream, args=(i, daemon.target, end, fps, tally), daemon=True)
            for i in range(streams)
        ] + [threading.Thread(target=f, args=(daemon.target, end, tally), daemon=True) for f in HOSTILE.values()]
        for t in workers:
            t.start()
        checkpoint: dict[str, float] | None = None
        while any(t.is_alive() for t in workers):
            now = time.monotonic() - t0
            samples.append({"t_s": round(now, 1), **daemon.sample()})
            if checkpoint is None and now >= checkpoint_s:
                checkpoint = samples[-1]
            time.sleep(min(5.0, max(0.5, duration / 20)))
            if now > duration + 120:
                raise SystemExit("soak: clients still running 2 minutes after the deadline")
        time.sleep(3)  # the daemon lets go of what the last clients held
        final = {"t_s": round(time.monotonic() - t0, 1), **daemon.sample()}
        if checkpoint is None:
            checkpoint = samples[len(samples) // 2]
        alive = daemon.proc.poll() is None
    finally:
        rc = daemon.stop()
    bad = {case: {c: n for c, n in codes.items() if c in BAD} for case, codes in tally.cases.items()}
    bad = {case: codes for case, codes in bad.items() if codes}
    growth = (final["rss_mb"] - checkpoint["rss_mb"]) / checkpoint["rss_mb"] * 100
    result = {
        "streams": streams,
        "minutes": minutes,
        "fps": fps,
        "daemon_threads_flag": threads,
        "cpu_count": os.cpu_count(),
        "frames_sent": tally.sent,
        "frames_answered": tally.answered,
        "answers": dict(tally.kinds),
        "cases": {case: dict(codes) for case, codes in sorted(tally.cases.items())},
        "internal_or_unknown": bad,
        "daemon_alive_at_end": alive,
        "daemon_exit_code": rc,
        "rss_mb": {"start": start["rss_mb"], "minute2": checkpoint["rss_mb"], "end": final["rss_mb"]},
        "checkpoint_s": checkpoint["t_s"],
        "rss_growth_pct": round(growth, 2),
        "fds": {"start": start["fds"], "minute2": checkpoint["fds"], "end": final["fds"]},
        "threads": {"start": start["threads"], "minute2": checkpoint["threads"], "end": final["threads"]},
        "samples": samples,
    }
    result["ok"] = bool(
        tally.sent == tally.answered
        and not bad
        and alive
        and rc == 0
        and growth < 5.0
        and tally.cases.get("health", Counter()).keys() <= {"SERVING"}
        and tally.cases.get("normal", Counter()) == Counter({"OK": streams})
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=16, help="normal camera streams (default: 16)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (default: 10)")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second per normal stream (default: 4)")
    p.add_argument("--threads", type=int, default=2, help="the daemon's --threads (default: 2)")
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.json"), help="where the JSON goes")
    args = p.parse_args(argv)
    if args.streams < 1 or args.minutes <= 0 or args.fps <= 0 or args.threads < 1:
        p.error("--streams, --minutes, --fps and --threads must be positive")
    result = run(args.streams, args.minutes, args.fps, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"soak: {args.streams} streams x {args.minutes:g} min, hostile clients beside them")
    print(f"  frames sent {result['frames_sent']}, answered {result['frames_answered']} {result['answers']}")
    print(f"  {'':8} {'start':>8} {'minute2':>8} {'end':>8}")
    for key in ("rss_mb", "fds", "threads"):
        v = result[key]
        print(f"  {key:8} {v['start']:8.1f} {v['minute2']:8.1f} {v['end']:8.1f}")
    print(f"  RSS growth minute 2 -> end: {result['rss_growth_pct']:+.2f}%")
    for case, codes in result["cases"].items():
        print(f"  {case:22} {codes}")
    print(f"  INTERNAL/UNKNOWN: {result['internal_or_unknown'] or 'none'}; ok: {result['ok']}; JSON: {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
