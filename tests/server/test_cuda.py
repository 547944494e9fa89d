"""CUDA serving: fp16 + channels_last, nvjpeg decode. Skipped where no GPU is present."""

from __future__ import annotations

import pytest
import torch

from edgeinfer.client import EdgeClient
from edgeinfer.server import Daemon, WeightsSource, load_model
from edgeinfer.server.preprocess import JpegImage, Preprocessor
from edgeinfer.server.registry import get_spec
from helpers import jpeg, synthetic_frame

pytestmark = pytest.mark.cuda


def test_nvjpeg_decode_matches_cpu_decode() -> None:
    cfg = get_spec("resnet50").preprocessing
    data = JpegImage(jpeg(synthetic_frame(3, 640, 480)))
    cpu = Preprocessor(cfg, device=torch.device("cpu"))(data).tensor
    gpu = Preprocessor(cfg, device=torch.device("cuda"), dtype=torch.float16)(data).tensor
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    assert (gpu.float().cpu() - cpu).abs().mean() < 0.02  # IDCT rounding and fp16 only


@pytest.mark.parametrize("name", ["squeezenet1_0", "resnet50", "inception_v3"])
def test_fp16_channels_last_matches_fp32(name: str) -> None:
    weights = WeightsSource("random", seed=0)
    gpu = load_model(name, device="cuda", weights=weights)
    cpu = load_model(name, device="cpu", weights=weights)
    try:
        assert gpu.precision == "fp16"
        assert gpu.scheduler.runner.channels_last
        size = gpu.input_size
        x = torch.randn(4, 3, size, size)
        out16 = gpu.scheduler.runner.infer(x.cuda().half(), 5)
        out32 = cpu.scheduler.runner.infer(x, 5)
        assert (out16.indices[:, 0] == out32.indices[:, 0]).float().mean() >= 0.75
    finally:
        gpu.stop()
        cpu.stop()


def test_served_on_cuda_end_to_end() -> None:
    daemon = Daemon(["127.0.0.1:0"]).start()
    try:
        daemon.add_model(load_model("squeezenet", device="cuda", weights=WeightsSource("random", seed=0)))
        daemon.mark_ready()
        with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
            results = list(client.stream([synthetic_frame(i) for i in range(10)], drop_policy="all"))
        assert [r.kind for r in results] == ["prediction"] * 10
        assert {(r.prediction.precision, r.prediction.device) for r in results if r.prediction} == {("fp16", "cuda")}
    finally:
        daemon.stop(grace=1)


def test_int8_on_cuda_is_refused() -> None:
    from edgeinfer.server.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="int8 runs on the CPU only"):
        load_model("squeezenet", precision="int8", device="cuda")
