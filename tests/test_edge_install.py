"""The board's install: a fresh venv with only `edgeinfer[edge]` from the package index serves an ONNX
artifact made earlier in this run, and torch is nowhere in it (DESIGN.md: extras)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.client import EdgeClient
from helpers import synthetic_frame

pytestmark = pytest.mark.slow  # a venv and a pip install from the package index (~60-90 s)

ROOT = Path(__file__).parents[1]
CLOSURE_MB = 250  # issue 27's target for the board extra's installed size


def _run(*cmd: str | Path, timeout: float = 300) -> str:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stderr[-2000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("edge")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT)
    (wheel,) = (tmp / "dist").glob("edgeinfer-*.whl")
    venv = tmp / ".venv-edge"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[edge]", timeout=600)
    return venv


def test_the_board_extra_brings_no_torch_and_fits(edge_venv: Path) -> None:
    listed = json.loads(_run(edge_venv / "bin" / "python", "-m", "pip", "list", "--format", "json"))
    names = {p["name"].lower() for p in listed}
    assert {"edgeinfer", "onnxruntime", "grpcio", "numpy", "simplejpeg", "pillow"} <= names
    assert not {n for n in names if n.startswith(("torch", "nvidia", "triton", "cuda"))}, names
    site = next((edge_venv / "lib").glob("python3*/site-packages"))
    installed = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and f.parts[-2] != "__pycache__")
    # pip, setuptools and the venv's own files count too: the whole closure as a board would carry it
    assert installed / 1e6 <= CLOSURE_MB, f"{installed / 1e6:.0f} MB"


def test_the_board_extra_serves_an_onnx_artifact(edge_venv: Path, onnx_repo: Path, tmp_path: Path) -> None:
    sock = tmp_path / "edge.sock"
    cmd = [edge_venv / "bin" / "edgeserver", "--model", "squeezenet:int8", "--repository", onnx_repo, "--port", "0"]
    proc = subprocess.Popen(
        [str(c) for c in [*cmd, "--unix-socket", sock, "--threads", "1"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        if "SERVING" not in lines[2]:
            proc.kill()
            pytest.fail(f"{lines} {proc.communicate(timeout=10)[1][-2000:]}")
        assert "served by onnxruntime" in lines[0]
        frames = [synthetic_frame(i) for i in range(4)]
        with EdgeClient(f"unix:{sock}") as client:
            answers = list(client.stream(frames, "squeezenet", drop_policy="all"))
            info = client.model("squeezenet")
        assert [a.kind for a in answers] == ["prediction"] * 4
        assert all(len(a.prediction.classes) == 5 for a in answers)
        assert (info.runtime, info.precision) == ("onnxruntime", "int8")
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
