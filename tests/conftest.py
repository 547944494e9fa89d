"""Fixtures: a real in-process daemon on localhost:0, clients, generated clips."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from edgeinfer.client import EdgeClient
from helpers import SMALL_FRAME_LIMIT, write_video


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("cuda" in item.keywords for item in items) and not _cuda():
        skip = pytest.mark.skip(reason="no CUDA device (bench/gpu_check.sh runs these on a GPU machine)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def daemon() -> Iterator[object]:
    """SqueezeNet 1.0 fp32 with seeded random weights, limits small enough to test."""
    import torch

    from edgeinfer.server import Daemon, WeightsSource, load_model

    torch.set_num_threads(2)
    d = Daemon(["127.0.0.1:0"], max_streams=8, max_frame_bytes=SMALL_FRAME_LIMIT).start()
    d.add_model(load_model("squeezenet", weights=WeightsSource("random", seed=0), max_frame_bytes=SMALL_FRAME_LIMIT))
    d.mark_ready()
    yield d
    d.stop(grace=1)


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
