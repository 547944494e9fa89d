"""The torchao PT2E flow (AOTInductor package): built, measured, served. Slow: it compiles C++."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from edgeinfer.client import EdgeClient
from edgeinfer.quant import quantize
from edgeinfer.quant.flows import quantize_pt2e
from edgeinfer.server import WeightsSource, load_model
from helpers import MakeDaemon, synthetic_frame


@pytest.mark.slow
def test_pt2e_squeezenet_artifact_is_measured_and_served(
    calib_clip: Path, tmp_path: Path, make_daemon: MakeDaemon
) -> None:
    artifact = quantize(
        "squeezenet",
        calib=calib_clip,
        out=tmp_path,
        weights=WeightsSource("random", seed=0),
        flow="pt2e",
        frames=16,
        latency_iterations=3,
    )
    meta = artifact.meta
    assert (meta["flow"], meta["file"], meta["max_batch"]) == ("pt2e", "model.pt2", 1)
    assert meta["fidelity"]["sqnr_db"] > 20
    model = load_model("squeezenet", precision="int8", repository=tmp_path)
    assert model.scheduler.max_batch == 1  # compiled for batch 1
    daemon = make_daemon(model)
    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        results = list(client.stream([synthetic_frame(i) for i in range(4)], drop_policy="all"))
    assert [r.prediction.precision for r in results if r.prediction] == ["int8"] * 4


def test_pt2e_without_torchao_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_torchao(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    import torch

    with pytest.raises(RuntimeError, match=r"needs torchao .*or use --flow fx"):
        quantize_pt2e(
            torch.nn.Identity(), [], engine="x86", example=torch.zeros(1, 3, 8, 8), package_path=tmp_path / "m.pt2"
        )
