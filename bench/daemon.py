"""The processes a bench measures: an edgeserver daemon (the one place that starts and stops one),
and the bare gRPC floor (bench/grpc_floor.py)."""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgeinfer.client import EdgeClient, EdgeInferError
from edgeinfer.server.workers import free_port

ROOT = Path(__file__).resolve().parents[1]


class DaemonProcess:
    """An edgeserver subprocess, as it runs on a robot: its own process and cores."""

    def __init__(
        self,
        models: list[str],
        repository: Path,
        threads: int,
        sock: Path | None,
        max_batch: int,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """``sock``: also listen on this Unix socket (None: TCP only, as --workers needs).
        ``launcher``: the edgeserver command (default: this environment's; bench/board.py runs a board venv's)."""
        self.port = free_port()
        self.sock = sock
        exe = shutil.which("edgeserver") or Path(sys.executable).with_name("edgeserver")
        # Without the console script (a checkout on PYTHONPATH, as bench/gpu_check.sh runs it): the module.
        launcher = launcher or ([str(exe)] if Path(exe).exists() else [sys.executable, "-m", "edgeinfer.server.cli"])
        cmd = [
            *launcher,
            "--weights",
            "random",
            "--seed",
            "0",
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            *(["--unix-socket", str(sock)] if sock else []),
            "--repository",
            str(repository),
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
            "--log-level",
            "warning",
            *extra,
        ]
        for m in models:
            cmd += ["--model", m]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | (env or {})
        )
        # Its output is read all along (a pipe nobody reads fills up and stalls the writer); the tail is kept.
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._all_workers = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.startup_s = self._wait_serving(models[0])
            if "--workers" in extra:  # the first worker answers before the others listen
                while not self._all_workers.wait(0.1):
                    self._check_running()
        except BaseException:  # never served (or interrupted): nobody else holds it to stop it
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if " workers SERVING on " in line:
                self._all_workers.set()

    def _wait_serving(self, model: str) -> float:
        name, _, precision = model.partition(":")
        deadline = time.monotonic() + 300
        # Wait for the port before the client's channel first dials it: a channel refused once tries again
        # only after gRPC's reconnect backoff (1 s, growing), which startup_s would count as startup.
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                self._check_running()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with EdgeClient(f"127.0.0.1:{self.port}") as c:
            while True:
                try:
                    c.wait_ready(name, precision=precision, timeout=2)
                    return time.perf_counter() - self.started
                except EdgeInferError:
                    self._check_running()
                    if time.monotonic() > deadline:
                        raise

    def _check_running(self) -> None:
        if self.proc.poll() is not None:  # it exited: say why instead of waiting on
            self._reader.join(5)
            output = "".join(self.output)
            raise RuntimeError(f"edgeserver exited with {self.proc.returncode}:\n{output[-3000:]}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class FloorProcess:
    """bench/grpc_floor.py: the same gRPC stream and threads as the daemon, no model."""

    def __init__(self, threads: int, module: str = "bench.grpc_floor") -> None:
        """``module``: bench.grpc_floor (sync, the daemon's layout) or bench.aio_floor (the asyncio prototype)."""
        cmd = [sys.executable, "-m", module, "--port", "0", "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # bench is a package there
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"grpc_floor.py did not start: {line}")
        self.target = f"127.0.0.1:{line[1]}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
