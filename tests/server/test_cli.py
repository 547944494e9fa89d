"""`edgeserver` as a process: start-up, SERVING, a stream, SIGTERM drain, and config errors."""

from __future__ import annotations

import os
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
        # --threads 1 leaves a core free (on more than one): the stream's reader decodes beside the model
        place = "stream" if len(os.sched_getaffinity(0)) > 1 else "inference"
        assert f"preprocessing on the {place} thread)" in lines[1]
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


def _one_line_exit_2(code: object, stderr: str, stdout: str = "") -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr  # one line, no usage block, no gRPC log line
    assert "listening" not in stdout  # checked before listening and before loading
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "argument --port: must be 0..65535, got 70000"),
        (["--port", "http"], "argument --port: expected a whole number, got 'http'"),
        (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["--max-streams", "-3"], "argument --max-streams: must be at least 1"),
        (["--max-frame-bytes", "0"], "argument --max-frame-bytes: must be at least 1"),
        (["--max-batch", "2.5"], "argument --max-batch: expected a whole number"),
        (["--batch-wait-ms", "-1"], "argument --batch-wait-ms: must be a finite number of at least 0"),
        (["--batch-sizes", "0,4"], "argument --batch-sizes: batch sizes must be positive"),
        (["--batch-sizes", "4,16"], "argument --batch-sizes: 16 is over --max-batch 8"),
        (["--workers", "0"], "argument --workers: must be 1..64"),
        (["--seed", "-1"], "argument --seed: must be at least 0"),
        (["--malloc-arenas", "-1"], "argument --malloc-arenas: must be 0..1024, got -1"),
        (["--max-connections-per-peer", "-1"], "argument --max-connections-per-peer: must be at least 0, got -1"),
        (["--metrics-port", "99999"], "argument --metrics-port: must be 0..65535"),
        # --insecure: past the plaintext refusal, to the address's own checks
        (["--host", "no-such-host.invalid", "--insecure", "--port", "0"], "cannot resolve 'no-such-host.invalid'"),
        (["--host", "192.0.2.1", "--insecure", "--port", "0"], "192.0.2.1 is not an address of this host"),
        (["--model", "alexnet", "--port", "0"], "known models: inception_v3 (inception, inceptionv3), resnet50"),
        (["--model", "squeezenet:int4", "--port", "0"], "unknown precision 'int4'"),
    ],
)
def test_edgeserver_mistakes_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeinfer.server.cli import main

    argv = ["--weights", "random", *args] + ([] if "--model" in args else ["--model", "squeezenet"])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr()
    line = _one_line_exit_2(exited.value.code, out.err, out.out)
    assert line.startswith("edgeserver: error: ") and message in line, line


@pytest.mark.slow  # an edgeserver process
def test_edgeserver_on_a_busy_port_says_so_in_one_line() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [_exe("edgeserver"), "--model", "squeezenet", "--weights", "random", "--host", "127.0.0.1"]
        out = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True, timeout=120)
    line = _one_line_exit_2(out.returncode, out.stderr, out.stdout)
    assert f"port {port} is in use" in line and "--port 0 for a free one" in line


def test_help_texts_agree_with_defaults() -> None:
    from edgeinfer.quant.cli import build_parser as quant_parser
    from edgeinfer.server.cli import build_parser as server_parser

    server_help = " ".join(server_parser().format_help().split())
    assert "seed for --weights random (default: 0)" in server_help and "(needs --seed)" not in server_help
    assert "--log-level {debug,info,warning,error} the daemon's log messages" in server_help
    quant_help = " ".join(quant_parser().format_help().split())
    assert "seed for --weights random (default: 0)" in quant_help


def test_edgequant_help_imports_no_torch() -> None:
    code = (
        "import sys; from edgeinfer.quant.cli import build_parser; build_parser().format_help(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "from edgeinfer.quant import quantize, FidelityReport; import edgeinfer.quant.quantize; "
        "import edgeinfer.quant as q; assert callable(q.quantize) and q.quantize.__name__ == 'quantize'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    out = subprocess.run([_exe("edgequant"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--calib" in out.stdout


def test_the_arena_cap_is_set_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeinfer.server import memory

    if memory._LIBC is None:
        pytest.skip("not glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert memory.cap_malloc_arenas(64) is False  # glibc read the variable at start: it wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert memory.cap_malloc_arenas(64) is True  # (64: more than this test process will make)
