"""`edgeserver --workers N`: N daemon processes behind one TCP port.

One daemon process serves at most what its Python side can hand through (gRPC
handlers and stream threads share one interpreter lock: on a fast GPU that, not
the model, is the ceiling; bench/results/README.md). With cores to spare, N processes get
N locks. Each worker is a whole ``edgeserver`` (its own models, batching, and
CUDA context) listening on the same port with SO_REUSEPORT; the kernel hands
each new connection to one of them, picked by a hash of its addresses. So a
stream is served by one worker, frames batch with the other streams of that
worker only, and a few streams often land unevenly
(bench/stream_clients.streams_per_worker reads how they fell). The pattern is gRPC Python's own multiprocessing example
(grpc/examples/python/multiprocessing).

This process is the supervisor and imports no torch:
- starts worker 0 and waits for it to serve before starting the others: a bad
  configuration (an unknown model, a missing int8 artifact) fails once, in one
  worker, and the rest load what is known to load;
- relays each worker's output, each line tagged ``[worker k]``;
- serves /metrics for all of them (prometheus_client's multiprocess mode);
- on SIGTERM/SIGINT stops them all (each drains); if one exits on its own, it
  stops the others and exits with that worker's status, so that a service
  manager restarts the whole daemon rather than serve on at part strength.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import IO

from edgeinfer.server.security import LOOPBACK, tcp_address

__all__ = ["free_port", "run_workers"]

STOP_S = 15.0  # a worker's drain (cli.DRAIN_S twice) and then some, before it is killed


def run_workers(argv: list[str], args: argparse.Namespace) -> int:
    if args.unix_socket:
        print(
            "edgeserver: error: a Unix socket has one listener, so --unix-socket cannot be shared by "
            "--workers; serve it with one daemon (--workers 1), or let same-host clients use TCP",
            file=sys.stderr,
        )
        return 2
    host = args.host or LOOPBACK  # each worker binds it the same way (loopback unless --host says otherwise)
    port = args.port or free_port("127.0.0.1" if host == LOOPBACK else host)
    metrics_dir = tempfile.mkdtemp(prefix="edgeserver-metrics-") if args.metrics_port else None
    env = os.environ | ({"PROMETHEUS_MULTIPROC_DIR": metrics_dir} if metrics_dir else {})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workers: list[Worker] = []
    # Each worker re-reads its TLS files when they change; SIGHUP to the supervisor reaches them all
    # (those that serve: one still starting has no handler yet, and SIGHUP would end it).
    signal.signal(signal.SIGHUP, lambda *_: [w.proc.send_signal(signal.SIGHUP) for w in workers if w.serving.is_set()])

    def start(k: int) -> Worker:
        # argparse keeps the last of a repeated option: these override the user's.
        extra = ["--workers", "1", "--worker-index", str(k), "--port", str(port), "--metrics-port", "0"]
        return Worker(k, [sys.executable, "-m", "edgeinfer.server.cli", *argv, *extra], env)

    workers.append(start(0))
    try:
        if not _serving(workers, stop):
            return _stop(workers, stop, metrics_dir)
        workers += [start(k) for k in range(1, args.workers)]
        if not _serving(workers, stop):
            return _stop(workers, stop, metrics_dir)
        if metrics_dir:
            _serve_metrics(args.metrics_port, metrics_dir, args.metrics_host)
        pids = ", ".join(str(w.proc.pid) for w in workers)
        print(f"edgeserver: {len(workers)} workers SERVING on {tcp_address(host, port)} (pids {pids})", flush=True)
        while not stop.wait(0.5) and all(w.proc.poll() is None for w in workers):
            pass
        return _stop(workers, stop, metrics_dir)
    except BaseException:
        _stop(workers, stop, metrics_dir)
        raise


class Worker:
    def __init__(self, index: int, cmd: list[str], env: dict[str, str]) -> None:
        self.index = index
        self.serving = threading.Event()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._relays = [
            threading.Thread(target=self._relay, args=(self.proc.stdout, sys.stdout), daemon=True),
            threading.Thread(target=self._relay, args=(self.proc.stderr, sys.stderr), daemon=True),
        ]
        for t in self._relays:
            t.start()

    def _relay(self, source: IO[str], sink: IO[str]) -> None:
        for line in source:
            if line.startswith("edgeserver: SERVING"):
                self.serving.set()
            sink.write(f"[worker {self.index}] {line}")
            sink.flush()

    def join_relays(self) -> None:
        for t in self._relays:
            t.join(5)


def _serving(workers: list[Worker], stop: threading.Event) -> bool:
    """True once every worker serves; False when one exited first or we were told to stop."""
    while not stop.is_set():
        if any(w.proc.poll() is not None for w in workers):
            return False
        if all(w.serving.wait(0.5 / len(workers)) for w in workers):
            return True
    return False


def _stop(workers: list[Worker], stop: threading.Event, metrics_dir: str | None) -> int:
    """Stop every worker (SIGTERM: each drains), and the exit status of the daemon as a whole."""
    exited_first = [w for w in workers if w.proc.poll() is not None]
    for w in workers:
        if w.proc.poll() is None:
            w.proc.terminate()
    killed = False
    for w in workers:
        try:
            w.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            print(f"edgeserver: worker {w.index} did not stop in {STOP_S:.0f} s: killed", file=sys.stderr)
            w.proc.kill()
            w.proc.wait()
            killed = True
        w.join_relays()
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if exited_first and not stop.is_set():
        w = exited_first[0]
        print(
            f"edgeserver: worker {w.index} (pid {w.proc.pid}) exited with status {w.proc.returncode}; "
            f"stopped the other workers",
            file=sys.stderr,
        )
        return w.proc.returncode if w.proc.returncode > 0 else 1
    return max((w.proc.returncode for w in workers if w.proc.returncode > 0), default=1 if killed else 0)


def _serve_metrics(port: int, metrics_dir: str, host: str = "127.0.0.1") -> None:
    """/metrics summed over the workers, which write their values to files in ``metrics_dir``."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    start_http_server(port, addr=host, registry=registry)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (--port 0 with workers: one port picked here for all of them)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]
