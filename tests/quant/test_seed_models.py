"""All five seed models quantize from a generated clip, load without model code and serve."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeinfer.client import EdgeClient
from edgeinfer.quant import Artifact, quantize
from edgeinfer.quant.quantize import prepare_for_int8
from edgeinfer.server import WeightsSource, get_spec, load_model
from edgeinfer.server.artifacts import load_int8_runner
from edgeinfer.server.weights import build_model
from helpers import MakeDaemon, synthetic_frame

OTHERS = ["squeezenet1_1", "vgg16", "inception_v3", "resnet50"]


@pytest.fixture(scope="module")
def artifacts(calib_clip: Path, repo: Path, squeezenet_int8: Artifact) -> dict[str, Artifact]:
    made = {"squeezenet1_0": squeezenet_int8}
    for name in OTHERS:
        made[name] = quantize(
            name, calib=calib_clip, out=repo, weights=WeightsSource("random", seed=0), frames=8, latency_iterations=1
        )
    return made


@pytest.mark.slow
def test_every_seed_model_has_a_measured_fidelity_report(artifacts: dict[str, Artifact]) -> None:
    assert sorted(artifacts) == ["inception_v3", "resnet50", "squeezenet1_0", "squeezenet1_1", "vgg16"]
    for name, artifact in artifacts.items():
        f = artifact.meta["fidelity"]
        assert 0.0 <= f["top1_agreement"] <= 1.0 and 0.0 <= f["top5_overlap"] <= 1.0, name
        # Random weights, measured here: 23-35 dB. Below 15 dB something is broken.
        assert f["sqnr_db"] > 15, (name, f["sqnr_db"])
        assert f["int8_bytes"] < f["fp32_bytes"] / 3, name
    assert artifacts["inception_v3"].meta["input_size"] == 299
    # Inception's 15 concatenations share one scale per group: none requantizes (4 of 15 did with
    # torch.ao's defaults; 2 with the max-pool branches left out of their group).
    assert artifacts["inception_v3"].meta["concatenations"] == {"concatenations": 15, "requantizing": 0}
    assert artifacts["squeezenet1_0"].meta["concatenations"] == {"concatenations": 8, "requantizing": 0}


@pytest.mark.slow
def test_vgg16_linear_layers_are_int8(artifacts: dict[str, Artifact], repo: Path) -> None:
    runner, _, _ = load_int8_runner(get_spec("vgg16"), repo)
    ops = collections.Counter(re.findall(r"(aten::\w+|quantized::\w+)", str(runner.module.inlined_graph)))
    # fc6 and fc7 (25088x4096, 4096x4096) fused with their ReLU, fc8 plain: all int8 GEMMs.
    assert ops["quantized::linear_relu"] == 2 and ops["quantized::linear"] == 1
    assert ops["quantized::conv2d_relu"] == 13
    assert ops["aten::dequantize"] == 1


@pytest.mark.slow
def test_artifacts_load_in_a_fresh_process_without_torchvision(artifacts: dict[str, Artifact]) -> None:
    paths = {name: str(a.folder / a.meta["file"]) for name, a in artifacts.items()}
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import torch\n"
        f"for name, path in {paths!r}.items():\n"
        "    size = 299 if name == 'inception_v3' else 224\n"
        "    out = torch.jit.load(path)(torch.zeros(1, 3, size, size))\n"
        "    print(name, tuple(out.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert sorted(out.stdout.split("\n")[:-1]) == sorted(f"{name} (1, 1000)" for name in paths)


@pytest.mark.slow
def test_daemon_serves_every_int8_artifact(artifacts: dict[str, Artifact], repo: Path, make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(*[load_model(name, precision="int8", repository=repo, warmup=False) for name in artifacts])
    with EdgeClient(f"127.0.0.1:{daemon.port}", timeout=60) as client:
        for name in artifacts:
            results = list(client.stream([synthetic_frame(i) for i in range(2)], name, drop_policy="all"))
            assert [(r.prediction.model, r.prediction.precision) for r in results if r.prediction] == [
                (name, "int8")
            ] * 2


@pytest.mark.slow
def test_inception_input_transform_fold_is_exact_in_fp32_and_both_variants_quantize(
    calib_clip: Path, tmp_path: Path
) -> None:
    spec = get_spec("inception_v3")
    weights = WeightsSource("random", seed=0)
    original = build_model(spec, weights)
    folded, pre = prepare_for_int8(spec, build_model(spec, weights), "fold")
    assert not folded.transform_input and pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    pixels = torch.rand(2, 3, 299, 299)
    mean, std = (
        torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1),
        torch.tensor(spec.preprocessing.std).view(1, 3, 1, 1),
    )
    with torch.inference_mode():
        a, b = folded((pixels - 0.5) / 0.5), original((pixels - mean) / std)
    # Random weights give logits around 1e7, so compare relative error: float rounding only.
    assert ((a - b).norm() / b.norm()).item() < 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))
    kept = quantize(
        "inception_v3",
        calib=calib_clip,
        out=tmp_path,
        weights=weights,
        frames=16,
        inception_transform="keep",
        latency_iterations=3,
    )
    assert kept.meta["inception_transform"] == "keep"
    assert kept.meta["preprocessing"]["mean"] == list(spec.preprocessing.mean)
    assert kept.meta["fidelity"]["sqnr_db"] > 10
