"""N concurrent camera streams, each from its own client process, as N robots' clients would be.

    from stream_clients import run_streams               # bench/ is not a package
    got = run_streams(["127.0.0.1:50051"], "resnet50", jpeg_bytes, n=8, frames=80)

Each stream runs in a separate Python process with its own channel (its own TCP
connection): streams from threads of one process would share that process's
interpreter lock and gRPC's one connection per target, and the clients, not the
daemon, could set the ceiling. The children connect and wait until the model is
ready, then all start at one signal; aggregate frames/s is every predicted frame
over the time from the first stream's start to the last one's end. With several
targets, stream i goes to target i % len(targets) (several daemons, one GPU).
The daemons' CPU time over the run is read from /proc when their pids are given, and
so is how the streams' connections were spread over their worker processes.

This module imports no torch: each child starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _processes() -> dict[int, tuple[int, int]]:
    """Every process's parent pid and CPU ticks (user + system, all threads), from /proc."""
    stats = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            fields = path.read_text().rsplit(")", 1)[1].split()
            stats[int(path.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, ticks
    return stats


def _family(pid: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    """``pid`` and its children (an edgeserver and its --workers)."""
    return [pid, *(p for p, (ppid, _) in stats.items() if ppid == pid)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children (edgeserver --workers), all threads (/proc)."""
    stats = _processes()
    return sum(stats[p][1] for p in _family(pid, stats) if p in stats) / os.sysconf("SC_CLK_TCK")


def streams_per_worker(pid: int, ports: Sequence[int]) -> list[int]:
    """Connections each serving process of ``pid`` (itself, or its --workers) holds on ``ports``, most first.

    A serving process is one that holds a socket listening on one of the ports
    (an edgeserver --workers supervisor listens on none). With SO_REUSEPORT the
    kernel picks a worker per connection by a hash of its addresses, so with a
    few streams the split can be uneven; this reads it from /proc/net/tcp{,6}
    and the processes' file descriptors.
    """
    sockets: dict[int, tuple[int, str]] = {}  # inode: (local port, state)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                sockets[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), f[3])
    counts = []
    for p in _family(pid, _processes()):
        states = [state for port, state in (sockets.get(_socket_inode(fd), (0, "")) for fd in _fds(p)) if port in ports]
        if "0A" in states:  # LISTEN
            counts.append(states.count("01"))  # ESTABLISHED
    return sorted(counts, reverse=True)


def _fds(pid: int) -> list[Path]:
    with contextlib.suppress(OSError):
        return list(Path(f"/proc/{pid}/fd").iterdir())
    return []


def _socket_inode(fd: Path) -> int:
    with contextlib.suppress(OSError):
        target = os.readlink(fd)
        if target.startswith("socket:["):
            return int(target[8:-1])
    return -1


def run_streams(
    targets: list[str],
    model: str,
    jpeg: bytes,
    n: int,
    frames: int,
    *,
    daemon_pids: Sequence[int] = (),
    timeout: float = 120.0,
    ready_timeout: float = 60.0,
) -> dict:
    """``n`` streams of ``frames`` copies of ``jpeg`` (drop policy "all"), one client process each."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as image:
        image.write(jpeg)
        image.flush()
        args = ["--model", model, "--jpeg", image.name, "--frames", str(frames), "--ready-timeout", str(ready_timeout)]
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--target", targets[i % len(targets)], *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        try:
            for c in children:  # each says "ready" once its channel is up and the model answers
                line = c.stdout.readline() if c.stdout else ""
                if line.strip() != "ready":
                    raise RuntimeError(f"a stream client did not start (exit {c.wait(timeout)}): {line!r}")
            ports = [int(t.rsplit(":", 1)[1]) for t in targets if not t.startswith("unix:")]
            split = [n for p in daemon_pids for n in streams_per_worker(p, ports)]  # all connected by now
            cpu0 = [cpu_seconds(p) for p in daemon_pids]
            t0 = time.monotonic()
            for c in children:
                assert c.stdin is not None
                c.stdin.write("go\n")
                c.stdin.flush()
            outs = [_answer(c, timeout) for c in children]
            wall = time.monotonic() - t0
            daemon_cpu = sum(cpu_seconds(p) for p in daemon_pids) - sum(cpu0)
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
                for pipe in (c.stdin, c.stdout):
                    if pipe is not None:
                        pipe.close()
    elapsed = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    predicted = sum(o["predicted"] for o in outs)
    batches = [b for o in outs for b in o["batch_sizes"]]
    inference = [ms for o in outs for ms in o["inference_ms"]]
    return {
        "fps": predicted / elapsed,
        "mean_batch": statistics.mean(batches) if batches else 0.0,
        "inference_ms_p50": statistics.median(inference) if inference else 0.0,
        "answered": sum(o["answered"] for o in outs),
        "sent": n * frames,
        # Cores the daemons kept busy over the run (the go signal until the last answer).
        "daemon_cores": daemon_cpu / wall if daemon_pids else None,
        "client_cores": sum(o["cpu_s"] for o in outs) / elapsed,
        # Streams each serving process had (several with --workers or several daemons), most first.
        "streams_per_worker": split if daemon_pids else None,
    }


def _answer(child: subprocess.Popen, timeout: float) -> dict:
    out = child.communicate(timeout=timeout)[0]
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"a stream client failed (exit {child.returncode}): {out[-500:]!r}") from None


def _child(target: str, model: str, jpeg: Path, frames: int, ready_timeout: float) -> None:
    from edgeinfer.client import EdgeClient

    image = jpeg.read_bytes()
    with EdgeClient(target) as client:
        client.wait_ready(model, timeout=ready_timeout)
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        cpu = time.process_time()
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for all the children
        results = list(client.stream([image] * frames, model, drop_policy="all"))
        end = time.monotonic()
        cpu = time.process_time() - cpu
    predictions = [r.prediction for r in results if r.prediction]
    out = {
        "start": start,
        "end": end,
        "cpu_s": cpu,
        "answered": len(results),
        "predicted": len(predictions),
        "batch_sizes": [p.batch_size for p in predictions],
        "inference_ms": [p.timings.inference_ms for p in predictions],
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="one stream client (run_streams starts these)")
    p.add_argument("--target", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--jpeg", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--ready-timeout", type=float, default=60.0)
    a = p.parse_args()
    _child(a.target, a.model, a.jpeg, a.frames, a.ready_timeout)
