"""A newcomer's first hour with the client: mistakes in one line, the camera error first, the README example."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.client.cli import main
from edgeinfer.client.overlay import caption
from edgeinfer.client.results import ClassScore, FrameResult, Prediction, Timings, percent


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code  # type: ignore[assignment]
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "argument --top-k: must be 1..1000, got 0"),
        (["--fps", "-5"], "argument --fps: must be at least 0, got -5"),
        (["--fps", "fast"], "argument --fps: expected a number, got 'fast'"),
        (["--quality", "101"], "argument --quality: must be 1..100, got 101"),
        (["--max-frames", "0"], "argument --max-frames: must be at least 1, got 0"),
        (["--timeout", "0"], "argument --timeout: must be above 0, got 0"),
        (["--wait", "nan"], "argument --wait: must be at least 0, got nan"),
        (["--max-outage", "-1"], "argument --max-outage: must be at least 0"),
        (["--client-resize", "maybe"], "argument --client-resize: invalid choice: 'maybe'"),
        (["--server", "localhost:99999"], "argument --server: 'localhost:99999': port must be 1-65535, got '99999'"),
        (["--server", "[::1]:0"], "argument --server: '[::1]:0': port must be 1-65535, got '0'"),
        (["--server", ":50051"], "argument --server: ':50051': no host"),
    ],
)
def test_edgeclient_mistakes_are_one_line_and_exit_2(args: list[str], message: str, clip: Path) -> None:
    code, out, err = run_cli("--video", str(clip), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edgeclient: error: ") and message in err, err


def test_camera_error_is_the_first_and_only_line(tmp_path: Path) -> None:
    # No camera here (index 42 nowhere), no daemon either: the camera is what the user must fix first.
    exe = str(Path(sys.executable).with_name("edgeclient"))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    out = subprocess.run(
        [exe, "--camera", "42", "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["edgeclient: OpenCV cannot open camera 42 (is it connected? try another index)"]
    assert out.stdout == ""  # no "summary: sent 0" when nothing was sent


def test_client_messages_name_the_flags_a_user_types(clip: Path, tmp_path: Path) -> None:
    pem = tmp_path / "me.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    code, out, err = run_cli("--video", str(clip), "--server", "127.0.0.1:1", "--tls-cert", str(pem))
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "edgeclient: --tls-cert and --tls-key (tls_cert, tls_key) go together: a client certificate and its private key"
    ]
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    code, out, err = run_cli("--video", str(clip), "--server", "192.0.2.7:50051", "--token-file", str(token))
    assert code == 2 and err.count("\n") == 1 and "give --tls-ca (tls_ca) for a TLS daemon, or --insecure" in err


def test_a_file_that_is_no_video_is_named_in_one_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list\n")
    exe = str(Path(sys.executable).with_name("edgeclient"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    out = subprocess.run(
        [exe, "--video", str(notes), "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"edgeclient: the video {notes} delivered no frames (is it a file OpenCV can decode?)"
    ]  # and no FFmpeg lines ("[mjpeg @ 0x...] No JPEG data found in image") before it


def test_random_weights_are_said_in_the_output(target: str, clip: Path) -> None:
    code, out, err = run_cli("--server", target, "--video", str(clip), "--fps", "0", "--max-frames", "2")
    assert code == 0, err
    assert "runs with random weights (random:seed=0)" in err and "WEIGHTS=imagenet scripts/demo.sh" in err
    assert "--weights imagenet" in err
    assert "reconnects 0, source gaps 0" in out


def test_probabilities_never_read_zero() -> None:
    assert [percent(p) for p in (0.00123, 0.0009, 0.0456, 0.5, 1.0)] == ["0.12%", "0.09%", "4.6%", "50%", "100%"]
    timings = Timings(0, 0, 0, 1, 1)
    prediction = Prediction((ClassScore(1, "goldfish", 0.00123),), timings, "squeezenet1_0", "fp32", "cpu", 1)
    result = FrameResult(sequence=0, capture_time_ns=0, prediction=prediction, latency_ms=12.0)
    assert caption(result) == "goldfish 0.12% 12 ms"


# The README's Python example, as a newcomer pastes it (a machine without a camera included).
def _readme_example() -> str:
    """The README's Python example, as printed there (the first ```python block after "Call it from Python")."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```python\n", text.index("**Call it from Python.**")) + len("```python\n")
    return text[start : text.index("```\n", start)]


README_EXAMPLE = _readme_example()


@pytest.mark.slow  # the whole example, clip included
def test_the_readme_example_runs_as_written(target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = README_EXAMPLE.replace("localhost:50051", target)  # the test daemon's port, nothing else changed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "['squeezenet1_0']"
    frames = [line for line in lines[2:] if line.split()[0].isdigit()]
    assert [int(line.split()[0]) for line in frames] == list(range(30))
    assert lines[-2] == "reconnects: 0"
    assert lines[-1].startswith("camera: OpenCV cannot open camera 0") or lines[-1].split()[1] == "prediction"


def test_the_readme_example_catches_everything_as_edgeinfererror() -> None:
    from edgeinfer.client import EdgeInferError, SourceError
    from edgeinfer.media.sources import SourceError as MediaSourceError

    assert issubclass(SourceError, EdgeInferError) and issubclass(SourceError, MediaSourceError)
