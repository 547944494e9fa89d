"""Quantization fixtures: one calibration clip and one SqueezeNet artifact per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.quant import Artifact, quantize
from edgeinfer.server import WeightsSource
from helpers import write_video


@pytest.fixture(scope="session")
def calib_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("calib") / "calib.mp4", frames=40, size=(320, 240))


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-repo")


@pytest.fixture(scope="session")
def squeezenet_int8(calib_clip: Path, repo: Path) -> Artifact:
    return quantize(
        "squeezenet",
        calib=calib_clip,
        out=repo,
        weights=WeightsSource("random", seed=0),
        frames=32,
        latency_iterations=5,
    )
