"""examples/cpp: the C++ client, built from the checked-in .proto with the system's gRPC, against a live daemon.

A change to proto/edgeinfer.proto that breaks a C++ caller fails here (CI installs
the toolchain: scripts/setup.sh). Without cmake, pkg-config or grpc++ the tests skip
and say which is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.client import EdgeClient
from helpers import jpeg, synthetic_frame

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "examples" / "cpp"
SERVICE = "edgeinfer.v1.EdgeInference"
# "frame 3    12.3 ms  airship [405] 0.0013 | jack-o'-lantern [607] 0.0013"
PREDICTION = re.compile(r"^frame (\d+) +[\d.]+ ms  (.+)$")
CLASS = re.compile(r"^(.+) \[(\d+)\] ([\d.]+)$")


def _missing_toolchain() -> str | None:
    for tool in ("cmake", "pkg-config", "c++", "protoc", "grpc_cpp_plugin"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    probe = subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], capture_output=True)
    if probe.returncode != 0:
        return "pkg-config finds no grpc++/protobuf"
    return None


# Building the client takes tens of seconds: left out of the inner loop (scripts/test.sh --fast).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def edge_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Configure and build once per session, unoptimised (it is the contract under test, not speed)."""
    missing = _missing_toolchain()
    if missing:
        pytest.skip(
            f"C++ toolchain absent ({missing}): apt-get install cmake g++ pkg-config libgrpc++-dev "
            "libprotobuf-dev protobuf-compiler-grpc (scripts/setup.sh does it as root)"
        )
    build = tmp_path_factory.mktemp("cpp-build")
    started = time.perf_counter()
    for cmd in (
        ["cmake", "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Plain"],  # no -O/-g flags: builds fastest
        ["cmake", "--build", str(build), "-j2"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    print(f"\nexamples/cpp built in {time.perf_counter() - started:.1f} s")  # shown with -s; --durations lists it too
    return build / "edge_client"


def _run(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def _predictions(stdout: str) -> dict[int, list[tuple[str, int, float]]]:
    """Frame sequence -> [(label, index, probability)] for every prediction line."""
    answers: dict[int, list[tuple[str, int, float]]] = {}
    for line in stdout.splitlines():
        m = PREDICTION.match(line)
        if m:
            classes = [CLASS.match(c) for c in m.group(2).split(" | ")]
            assert all(classes), line
            answers[int(m.group(1))] = [(c.group(1), int(c.group(2)), float(c.group(3))) for c in classes]  # type: ignore[union-attr]
    return answers


def test_health_check(edge_client: Path, target: str) -> None:
    done = _run(edge_client, "--server", target, "--health-only")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"health: {SERVICE} SERVING"]


def test_jpeg_files_stream_one_answer_per_frame(edge_client: Path, target: str, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        files += ["--jpeg", str(tmp_path / f"{i}.jpg")]
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(synthetic_frame(i)))
    done = _run(edge_client, "--server", target, *files, "--repeat", "3", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"health: {SERVICE} SERVING"
    answers = _predictions(done.stdout)
    assert sorted(answers) == list(range(6))  # one answer per frame, none dropped (--drop-policy all by default)
    assert all(len(classes) == 3 and all(label for label, _, _ in classes) for classes in answers.values())
    assert lines[-1] == "summary: sent 6, answered 6 (predicted 6, dropped 0, errors 0)"

    # The same file through the Python client: the same classes. Random weights give near-equal
    # scores, so batching may reorder ties: the C++ top-1 must be among Python's top 5, same score.
    with EdgeClient(target, timeout=30) as client:
        python = client.classify((tmp_path / "0.jpg").read_bytes(), "squeezenet", top_k=5)
    top1_label, top1_index, top1_p = answers[0][0]
    by_index = {c.index: c for c in python.classes}
    assert top1_index in by_index and by_index[top1_index].label == top1_label
    assert by_index[top1_index].probability == pytest.approx(top1_p, abs=2e-4)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_raw_file_streams_each_frame(edge_client: Path, target: str, tmp_path: Path, order: str) -> None:
    bgr = [synthetic_frame(i, width=160, height=120) for i in range(4)]
    frames = bgr if order == "bgr" else [f[:, :, ::-1] for f in bgr]
    path = tmp_path / f"frames.{order}"
    path.write_bytes(np.ascontiguousarray(np.stack(frames)).tobytes())
    args = ["--server", target, "--raw", str(path), "--width", "160", "--height", "120", "--top-k", "2"]
    done = _run(edge_client, *args, *(["--bgr"] if order == "bgr" else []))
    assert done.returncode == 0, done.stderr
    answers = _predictions(done.stdout)
    assert sorted(answers) == [0, 1, 2, 3]
    assert all(len(classes) == 2 for classes in answers.values())
    assert done.stdout.splitlines()[-1] == "summary: sent 4, answered 4 (predicted 4, dropped 0, errors 0)"

    with EdgeClient(target, timeout=30) as client:  # same pixels, same order, via Python's raw encoding
        python = client.classify(bgr[0], "squeezenet", top_k=5, encoding="raw")
    assert answers[0][0][1] in {c.index for c in python.classes}


def test_bad_frame_is_answered_in_band(edge_client: Path, target: str, tmp_path: Path) -> None:
    (tmp_path / "not.jpg").write_bytes(b"this is no JPEG")
    done = _run(edge_client, "--server", target, "--jpeg", str(tmp_path / "not.jpg"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^frame 0 error INVALID_ARGUMENT: .*JPEG", done.stdout, re.M), done.stdout
    assert done.stdout.splitlines()[-1] == "summary: sent 1, answered 1 (predicted 0, dropped 0, errors 1)"


def test_unknown_model_is_the_status(edge_client: Path, target: str, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(synthetic_frame(0)))
    done = _run(edge_client, "--server", target, "--jpeg", str(tmp_path / "a.jpg"), "--model", "nosuch")
    assert done.returncode == 1
    assert done.stderr.startswith("edge_client: NOT_FOUND: unknown model 'nosuch'")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--raw", "x.rgb"], "--raw needs --width and --height"),
        (["--jpeg", "a.jpg", "--top-k", "three"], "--top-k wants a whole number"),
        (["--frobnicate", "1"], "unknown argument --frobnicate"),
    ],
)
def test_usage_mistakes_are_one_line_and_status_2(edge_client: Path, args: list[str], says: str) -> None:
    done = _run(edge_client, *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr
