"""CUDA serving: fp16 + channels_last, nvjpeg decode. Skipped where no GPU is present."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.nvjpeg_hazard import forward_while_decoding
from edgeinfer.client import EdgeClient
from edgeinfer.server import WeightsSource, load_model
from edgeinfer.server.preprocess import JpegImage, Preprocessor
from edgeinfer.server.registry import get_spec
from helpers import MakeDaemon, jpeg, synthetic_frame

pytestmark = pytest.mark.cuda


def test_nvjpeg_decode_matches_cpu_decode() -> None:
    cfg = get_spec("resnet50").preprocessing
    data = JpegImage(jpeg(synthetic_frame(3, 640, 480)))
    cpu = Preprocessor(cfg, device=torch.device("cpu"))(data).tensor
    gpu = Preprocessor(cfg, device=torch.device("cuda"), dtype=torch.float16)(data).tensor
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    assert (gpu.float().cpu() - cpu).abs().mean() < 0.02  # IDCT rounding and fp16 only


@pytest.mark.parametrize("name", ["squeezenet1_0", "resnet50", "vgg16"])
def test_fp16_channels_last_matches_fp32(name: str) -> None:
    weights = WeightsSource("random", seed=0)
    gpu = load_model(name, device="cuda", weights=weights)
    cpu = load_model(name, device="cpu", weights=weights)
    try:
        assert gpu.precision == "fp16"
        assert gpu.scheduler.runner.channels_last
        size = gpu.input_size
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        out16 = gpu.scheduler.runner.infer(x.cuda().half(), 5)
        assert out16.probabilities.shape == (4, 5) and torch.isfinite(out16.probabilities).all()
        with torch.inference_mode():  # the logits themselves: random weights can leave top-1 a near tie
            half = x.cuda().half().contiguous(memory_format=torch.channels_last)
            logits16 = gpu.scheduler.runner.module(half).float().cpu()
            logits32 = cpu.scheduler.runner.module(x)
        assert (logits16 - logits32).abs().max() <= 0.02 * logits32.abs().max()
    finally:
        gpu.stop()
        cpu.stop()


def test_a_model_that_overflows_fp16_is_refused_and_serves_in_fp32() -> None:
    """Random-weight Inception v3 has no trained batch norm to tame it: activations reach ~1e11 (fp16 ends at 65504)."""
    from edgeinfer.server.errors import InvalidRequest

    weights = WeightsSource("random", seed=0)
    with pytest.raises(InvalidRequest, match=r"inception_v3 fp16 .* overflow fp16 .*\(--precision fp32\)"):
        load_model("inception_v3", device="cuda", weights=weights)
    model = load_model("inception_v3", device="cuda", precision="fp32", weights=weights)
    try:
        x = torch.randn(2, 3, model.input_size, model.input_size, device="cuda")
        assert torch.isfinite(model.scheduler.runner.infer(x, 5).probabilities).all()
    finally:
        model.stop()


def test_served_on_cuda_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.add_model(load_model("squeezenet", device="cuda", weights=WeightsSource("random", seed=0)))
    daemon.mark_ready()
    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        results = list(client.stream([synthetic_frame(i) for i in range(10)], drop_policy="all"))
    assert [r.kind for r in results] == ["prediction"] * 10
    assert {(r.prediction.precision, r.prediction.device) for r in results if r.prediction} == {("fp16", "cuda")}


def test_int8_on_cuda_is_refused() -> None:
    from edgeinfer.server.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="int8 runs on the CPU only"):
        load_model("squeezenet", precision="int8", device="cuda")


def test_decoding_on_other_threads_leaves_a_running_model_alone() -> None:
    cfg = get_spec("resnet50").preprocessing
    pre = Preprocessor(cfg, device=torch.device("cuda"), dtype=torch.float16)
    wrong, bad_decodes, decodes = forward_while_decoding(lambda data: pre(JpegImage(data)).tensor)
    assert decodes > 0
    assert (wrong, bad_decodes) == (0, 0)


def test_cuda_graph_replays_match_the_eager_model_at_every_batch_size() -> None:
    weights = WeightsSource("random", seed=0)
    eager = load_model("resnet50", device="cuda", weights=weights, max_batch=8)
    graphed = load_model("resnet50", device="cuda", weights=weights, max_batch=8, cuda_graphs=True)
    try:
        assert eager.scheduler.runner.graph_sizes == ()
        assert graphed.scheduler.runner.graph_sizes == (1, 2, 4, 8)
        generator = torch.Generator().manual_seed(0)
        for n in (1, 8, 3, 2, 1):  # 3 has no graph (runs eagerly); 1 again after other sizes' replays
            x = torch.randn(n, 3, 224, 224, generator=generator).cuda().half()
            a, b = eager.scheduler.runner.infer(x, 5), graphed.scheduler.runner.infer(x, 5)
            assert b.probabilities.shape == (n, 5)
            assert torch.equal(a.indices[:, 0], b.indices[:, 0])
            assert torch.allclose(a.probabilities, b.probabilities, atol=2e-3)
    finally:
        eager.stop()
        graphed.stop()


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_concurrent_streams_on_cuda_are_batched_and_all_answered(cuda_graphs: bool, make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(max_streams=8)
    weights = WeightsSource("random", seed=0)
    daemon.add_model(load_model("resnet50", device="cuda", weights=weights, max_batch=8, cuda_graphs=cuda_graphs))
    daemon.mark_ready()
    data = jpeg(synthetic_frame(5, 640, 480))
    results: list = []

    def one() -> None:
        with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
            results.extend(client.stream([data] * 30, "resnet50", drop_policy="all"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.kind for r in results] == ["prediction"] * 120
    sizes = [r.prediction.batch_size for r in results if r.prediction]
    assert max(sizes) > 1  # frames of different streams shared a forward pass
    assert len({r.prediction.classes[0].index for r in results if r.prediction}) == 1  # same frame, same answer


def test_a_cuda_daemon_exits_on_sigterm_after_serving_concurrent_streams(tmp_path: Path) -> None:
    """SIGTERM ends a CUDA daemon (graphs, stream threads' CUDA streams) as promptly as a CPU one."""
    log = tmp_path / "edgeserver.log"
    args = ["--model", "squeezenet", "--device", "cuda", "--cuda-graphs", "--weights", "random"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeinfer.server.cli", *args, "--port", "0", "--host", "127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "SERVING" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        port = int(log.read_text().split("listening on 127.0.0.1:")[1].split()[0].rstrip(","))
        data = jpeg(synthetic_frame(2, 640, 480))
        kinds: list[str] = []

        def one() -> None:
            with EdgeClient(f"127.0.0.1:{port}") as client:
                kinds.extend(r.kind for r in client.stream([data] * 20, "squeezenet", drop_policy="all"))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert kinds == ["prediction"] * 80
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log
            time.sleep(2)
            pytest.fail(f"the daemon did not exit 30 s after SIGTERM:\n{log.read_text()[-6000:]}")
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert "draining" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
