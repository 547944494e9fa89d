"""`edgeserver --workers N`: N processes on one port, each stream served by one of them, stopped together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeinfer.client import EdgeClient
from edgeinfer.client.api import channel_options
from edgeinfer.server.workers import free_port
from helpers import synthetic_frame

# Each test runs edgeserver processes: left out of the inner loop (scripts/test.sh --fast).
pytestmark = pytest.mark.slow

MODEL = ["--model", "squeezenet1_1", "--weights", "random", "--threads", "1", "--host", "127.0.0.1"]


@dataclass
class Supervisor:
    proc: subprocess.Popen
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.out + self.err)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text()):
                return m
            assert self.proc.poll() is None, self.text()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{self.text()[-3000:]}")


@contextmanager
def edgeserver(*args: str) -> Iterator[Supervisor]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer.server.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sup = Supervisor(proc)
    readers = [
        threading.Thread(target=lambda s=s, sink=sink: sink.extend(s), daemon=True)
        for s, sink in ((proc.stdout, sup.out), (proc.stderr, sup.err))
    ]
    for t in readers:
        t.start()
    try:
        yield sup
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _serving(sup: Supervisor) -> tuple[str, list[int]]:
    m = sup.wait_for(r"edgeserver: 2 workers SERVING on (\S+) \(pids (\d+), (\d+)\)")
    return m[1], [int(m[2]), int(m[3])]


def test_workers_share_one_port_and_stop_together() -> None:
    metrics_port = free_port()
    with edgeserver("--workers", "2", "--port", "0", "--metrics-port", str(metrics_port), *MODEL) as sup:
        target, pids = _serving(sup)
        assert len(set(pids)) == 2 and all(p != sup.proc.pid for p in pids)
        # 16 connections (a subchannel pool per channel: gRPC Python shares one connection per
        # target otherwise); the kernel spreads them, all on one worker has odds of 2 in 65536.
        frames = [synthetic_frame(i) for i in range(2)]
        kinds = []
        for _ in range(16):
            options = [*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
            with EdgeClient(target, channel=grpc.insecure_channel(target, options=options)) as client:
                kinds += [r.kind for r in client.stream(frames, "squeezenet1_1", drop_policy="all", timeout=60)]
        assert kinds == ["prediction"] * 32
        # A stream's closing line is logged after its last answer went out: wait for all 16.
        closed_line = r"\[worker (\d)\] .* stream on squeezenet1_1 closed: \{'predicted': 2"
        deadline = time.monotonic() + 10
        while len(closed := re.findall(closed_line, sup.text())) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(closed) == 16 and set(closed) == {"0", "1"}  # each worker served some of the streams
        # One /metrics for both: the supervisor adds up the workers' counters.
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        predicted = [
            s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
            if s.name == "edgeinfer_frames_total" and s.labels.get("outcome") == "predicted"
        ]
        assert predicted == [32.0]
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(60) == 0
        sup.wait_for(r"\[worker 0\] edgeserver: draining")
        sup.wait_for(r"\[worker 1\] edgeserver: draining")
        for pid in pids:  # no worker outlives the supervisor
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_a_worker_that_dies_stops_the_daemon_with_its_status() -> None:
    with edgeserver("--workers", "2", "--port", "0", *MODEL) as sup:
        _, pids = _serving(sup)
        os.kill(pids[1], signal.SIGKILL)
        assert sup.proc.wait(60) == 1
        assert re.search(rf"worker 1 \(pid {pids[1]}\) exited with status -9; stopped the other workers", sup.text())
        with pytest.raises(ProcessLookupError):
            os.kill(pids[0], 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2", "--unix-socket", "/tmp/edge-workers.sock"], "--unix-socket cannot be shared by --workers"),
        (["--workers", "0"], "argument --workers: must be 1..64, got 0"),
        # found before any worker starts (server/startup_checks.py): one line from the supervisor
        (["--workers", "2", "--precision", "fp16"], "edgeserver: error: argument --model: squeezenet1_1 in fp16: fp16"),
        # found only when a worker loads the model: its line, prefixed
        (["--workers", "2", "--weights", __file__], f"[worker 0] edgeserver: error: {__file__} is not a state_dict"),
    ],
)
def test_workers_config_errors_exit_2(args: list[str], message: str) -> None:
    with edgeserver("--port", "0", *MODEL, *args) as sup:  # args last: they win over MODEL's --weights
        assert sup.proc.wait(120) == 2
        sup.wait_for(re.escape(message), timeout=10)
