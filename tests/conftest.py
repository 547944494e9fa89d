"""Fixtures: real in-process daemons on localhost:0 (one factory starts and stops them all), clients,
generated clips."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from edgeinfer.client import EdgeClient
from helpers import SMALL_FRAME_LIMIT, daemons, write_video


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("cuda" in item.keywords for item in items) and not _cuda():
        skip = pytest.mark.skip(reason="no CUDA device (bench/gpu_check.sh runs these on a GPU machine)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Any]]:
    """Daemons for one test: ``make_daemon(*models, ready=True, **Daemon kwargs)``; all stopped after it."""
    with daemons() as start:
        yield start


@pytest.fixture(scope="session")
def session_daemons() -> Iterator[Callable[..., Any]]:
    """The same factory for session-wide daemons (loaded once, shared by many tests)."""
    with daemons() as start:
        yield start


@pytest.fixture(scope="session")
def daemon(session_daemons: Callable[..., Any]) -> object:
    """SqueezeNet 1.0 fp32 with seeded random weights, limits small enough to test."""
    import torch

    from edgeinfer.server import WeightsSource, load_model

    torch.set_num_threads(2)
    model = load_model("squeezenet", weights=WeightsSource("random", seed=0), max_frame_bytes=SMALL_FRAME_LIMIT)
    return session_daemons(model, max_streams=8, max_frame_bytes=SMALL_FRAME_LIMIT)


@pytest.fixture(scope="session")
def target(daemon: object) -> str:
    return f"127.0.0.1:{daemon.port}"  # type: ignore[attr-defined]


@pytest.fixture
def client(target: str) -> Iterator[EdgeClient]:
    with EdgeClient(target, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-frame, 30 fps, 320x240 MP4 clip."""
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=30)


# Quantization: one calibration clip and one SqueezeNet 1.0 int8 artifact per test session,
# shared by the quantizer's tests and the bench's.


@pytest.fixture(scope="session")
def calib_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("calib") / "calib.mp4", frames=40, size=(320, 240))


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-repo")


@pytest.fixture(scope="session")
def squeezenet_int8(calib_clip: Path, repo: Path) -> Any:
    from edgeinfer.quant import quantize
    from edgeinfer.server import WeightsSource

    return quantize(
        "squeezenet",
        calib=calib_clip,
        out=repo,
        weights=WeightsSource("random", seed=0),
        frames=32,
        latency_iterations=5,
    )


@pytest.fixture(scope="session")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with SqueezeNet 1.0 as an ONNX int8 artifact (random weights, seed 0)."""
    from edgeinfer.quant.onnx_export import make_onnx_artifact
    from edgeinfer.server import WeightsSource

    repo = tmp_path_factory.mktemp("onnx-repo")
    make_onnx_artifact(
        "squeezenet",
        calib="synthetic",
        out=repo,
        weights=WeightsSource("random", seed=0),
        frames=16,
        latency_iterations=2,
    )
    return repo
