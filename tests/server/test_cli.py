"""`edgeserver` as a process: start-up, SERVING, a stream, SIGTERM drain, and config errors."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.client import EdgeClient
from helpers import synthetic_frame


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


@pytest.mark.slow  # an edgeserver process
def test_edgeserver_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "edge.sock"
    proc = subprocess.Popen(
        [
            _exe("edgeserver"),
            "--model",
            "squeezenet1_1",
            "--weights",
            "random",
            "--seed",
            "1",
            "--port",
            "0",
            "--unix-socket",
            str(sock),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "listening on" in lines[0] and f"unix:{sock}" in lines[0]
        assert "loaded squeezenet1_1 fp32 on cpu (weights random:seed=1, input 224x224, batch sizes [1" in lines[1]
        assert "preprocessing on the inference thread)" in lines[1]
        assert "SERVING" in lines[2]
        # Same-host clients reach it over the Unix socket, with pixels in shared memory if they like.
        frames = [synthetic_frame(i) for i in range(3)]
        with EdgeClient(f"unix:{sock}") as client:
            results = list(client.stream(frames, "squeezenet1_1", drop_policy="all"))
            raw = list(client.stream(frames, "squeezenet1_1", drop_policy="all", encoding="raw"))
            shared = list(client.stream(frames, "squeezenet1_1", drop_policy="all", encoding="shm"))
        assert [r.kind for r in results + raw + shared] == ["prediction"] * 9
        assert [r.prediction.top1.index for r in shared] == [r.prediction.top1.index for r in raw]
        proc.send_signal(signal.SIGUSR1)  # a stuck-looking daemon tells where each thread is, and serves on
        with EdgeClient(f"unix:{sock}") as client:
            assert [r.kind for r in client.stream(frames, "squeezenet1_1", drop_policy="all")] == ["prediction"] * 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "draining" in out
        assert "most recent call first" in err and "in main" in err  # the main thread's stack, in cli.main
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "squeezenet", "--precision", "fp16"], "fp16 is served on CUDA only"),
        (["--model", "alexnet"], "unknown model 'alexnet'"),
        (["--model", "squeezenet", "--weights", "/nonexistent.pth"], "does not exist"),
        (["--model", "squeezenet", "--weights", "random", "--cuda-graphs"], "it needs --device cuda, not cpu"),
    ],
)
@pytest.mark.slow  # an edgeserver process per case
def test_edgeserver_config_errors_exit_2_with_a_reason(args: list[str], message: str) -> None:
    out = subprocess.run([_exe("edgeserver"), "--port", "0", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
