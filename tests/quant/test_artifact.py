"""edgequant's artifact: contents, fidelity, loading without model code, refusals, serving."""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from edgeinfer.client import EdgeClient, EdgeInferError
from edgeinfer.quant import Artifact
from edgeinfer.server import WeightsSource, get_spec, load_model
from edgeinfer.server.artifacts import SIDECAR, load_int8_runner, read_sidecar
from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.loading import resolve_precision
from helpers import MakeDaemon, synthetic_frame


def test_sidecar_says_how_it_was_made(squeezenet_int8: Artifact) -> None:
    meta = read_sidecar(squeezenet_int8.folder)
    assert meta["model"] == "squeezenet1_0" and meta["precision"] == "int8"
    assert (meta["flow"], meta["engine"]) == ("fx", "x86")
    assert meta["torch"] == torch.__version__ and meta["torchvision"]
    assert meta["input_size"] == 224 and meta["preprocessing"]["resize_size"] == 256
    assert meta["labels"] == "torchvision:SqueezeNet1_0_Weights.IMAGENET1K_V1" and meta["num_classes"] == 1000
    assert meta["weights"] == "random:seed=0"
    assert meta["calibration"]["source"].startswith("video:") and meta["calibration"]["frames"] == 24
    assert meta["file_bytes"] == (squeezenet_int8.folder / "model.pt").stat().st_size


def test_fidelity_is_measured_on_held_out_frames(squeezenet_int8: Artifact) -> None:
    f = read_sidecar(squeezenet_int8.folder)["fidelity"]
    assert f["frames"] == 8  # a quarter of 32, none of them calibrated
    assert f["top1_agreement"] >= 0.75 and f["top5_overlap"] >= 0.6
    assert f["sqnr_db"] > 20  # measured here: ~32 dB with random weights
    assert f["int8_bytes"] < f["fp32_bytes"] / 3  # 5.0 MB -> ~1.4 MB
    assert f["fp32_ms"] > 0 and f["int8_ms"] > 0  # timed, never asserted on
    table = squeezenet_int8.report.table("t")
    assert "top-1 agreement" in table and "logit SQNR" in table and "x smaller" in table
    # Random weights say so first; 8 frames are flagged as weak evidence; every loss has its interval.
    assert table.splitlines()[0].startswith("RANDOM WEIGHTS:")
    assert "WEAK EVIDENCE: 8 frames measured the loss; one frame is 12.5 points" in table
    assert "each 6 dB is about one bit" in table
    loss = f["loss"]
    assert loss["against"] == "fp32" and loss["frames"] == 8 and sum(loss["counts"]) == 8
    assert loss["low"] <= loss["points"] <= loss["high"] and loss["high"] > 25  # 8 frames bound little
    assert f["random_weights"] is True and f["weak_evidence"] is True


def test_quantized_graph_keeps_fire_concat_and_classifier_in_int8(squeezenet_int8: Artifact) -> None:
    runner, _, _ = load_int8_runner(get_spec("squeezenet"), squeezenet_int8.folder.parents[1])
    ops = collections.Counter(re.findall(r"(aten::\w+|quantized::\w+)", str(runner.module.inlined_graph)))
    # stem + 8 Fire modules x (squeeze, expand1x1, expand3x3) + classifier: every conv fused with its ReLU
    assert ops["quantized::conv2d_relu"] == 1 + 8 * 3 + 1
    assert ops["aten::cat"] == 8  # one per Fire module, on quantized tensors
    # One quantize at the input, one dequantize on the logits: nothing in between falls back to fp32.
    assert ops["aten::quantize_per_tensor"] == 1 and ops["aten::dequantize"] == 1
    assert not any(op in ops for op in ("aten::conv2d", "aten::relu", "aten::_convolution"))


def test_artifact_runs_in_a_fresh_process_without_torchvision(squeezenet_int8: Artifact, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 224, 224)
    torch.save(x, tmp_path / "x.pt")
    runner, _, _ = load_int8_runner(get_spec("squeezenet"), squeezenet_int8.folder.parents[1])
    expected = runner.module(x)
    code = (
        "import sys; sys.modules['torchvision'] = None\n"  # any torchvision import would fail
        "import torch\n"
        f"m = torch.jit.load({str(squeezenet_int8.folder / 'model.pt')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
    assert expected.shape == (2, 1000)  # traced at batch 1, runs at any batch


def test_serving_int8_prints_no_deprecation_of_quantized_tensors(squeezenet_int8: Artifact) -> None:
    """PyTorch's warn-once about quantize_per_tensor came out of the first int8 forward onto the daemon's
    stderr (C++, past Python's warnings filters); a fresh process, since it is said once per process."""
    code = (
        "import torch\n"
        "from edgeinfer.server import get_spec\n"
        "from edgeinfer.server.artifacts import load_int8_runner\n"
        f"runner, _, _ = load_int8_runner(get_spec('squeezenet'), {str(squeezenet_int8.folder.parents[1])!r})\n"
        "print(tuple(runner.module(torch.zeros(1, 3, 224, 224)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "(1, 1000)"
    assert "quantize_per_tensor" not in out.stderr and "deprecated" not in out.stderr, out.stderr


def _copy(artifact: Artifact, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(artifact.folder, repo / "squeezenet1_0" / artifact.folder.name)
    return repo


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("engine", "qnnpack", "quantized for the qnnpack engine but this daemon runs x86"),
        ("torch", "2.3.0", "made with torch 2.3.0"),
        ("format_version", 99, "artifact format 99"),
    ],
)
def test_incompatible_artifacts_are_refused(
    squeezenet_int8: Artifact, tmp_path: Path, field: str, value: object, message: str
) -> None:
    repo = _copy(squeezenet_int8, tmp_path)
    sidecar = repo / "squeezenet1_0" / "int8-x86" / SIDECAR
    meta = json.loads(sidecar.read_text())
    meta[field] = value
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(WeightsUnavailable, match=message) as info:
        load_int8_runner(get_spec("squeezenet"), repo)
    assert "edgequant --model squeezenet1_0" in info.value.details


def test_missing_artifact_names_the_edgequant_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"edgequant --model resnet50 --calib PATH --out"):
        load_model("resnet50", precision="int8", repository=tmp_path)


def test_int8_is_cpu_only() -> None:
    from edgeinfer.server.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="int8 runs on the CPU only; on CUDA serve fp16"):
        resolve_precision("int8", torch.device("cuda"))


def test_daemon_serves_the_int8_artifact(squeezenet_int8: Artifact, make_daemon: MakeDaemon) -> None:
    repo = squeezenet_int8.folder.parents[1]
    daemon = make_daemon(
        load_model("squeezenet", precision="int8", repository=repo),
        load_model("squeezenet", precision="fp32", weights=WeightsSource("random", seed=0)),
    )
    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        info = client.model("squeezenet", precision="int8")
        assert (info.precision, info.engine) == ("int8", "x86")
        assert info.fidelity is not None and info.fidelity.sqnr_db > 20 and info.fidelity.frames == 8
        assert info.weights.startswith("artifact:") and "random:seed=0" in info.weights
        frames = [synthetic_frame(i) for i in range(6)]
        int8 = list(client.stream(frames, precision="int8", drop_policy="all"))
        fp32 = list(client.stream(frames, precision="fp32", drop_policy="all"))
        assert [r.prediction.precision for r in int8 if r.prediction] == ["int8"] * 6
        agree = sum(a.prediction.top1.index == b.prediction.top1.index for a, b in zip(int8, fp32, strict=True))
        assert agree >= 4  # same random model, int8 vs fp32
        with pytest.raises(EdgeInferError) as err:
            client.model("squeezenet", precision="fp16")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_qnnpack_artifact_for_arm_boards(calib_clip: Path, tmp_path: Path) -> None:
    from edgeinfer.quant import quantize

    try:
        artifact = quantize(
            "squeezenet1_1",
            calib=calib_clip,
            out=tmp_path,
            weights=WeightsSource("random", seed=0),
            engine="qnnpack",
            frames=8,
            latency_iterations=2,
        )
        assert artifact.folder.name == "int8-qnnpack" and artifact.meta["engine"] == "qnnpack"
        assert artifact.meta["fidelity"]["sqnr_db"] > 20  # per-channel weights on qnnpack too (36 dB measured)
        with pytest.raises(WeightsUnavailable, match="no int8 artifact"):  # an x86 daemon looks for int8-x86
            load_int8_runner(get_spec("squeezenet1_1"), tmp_path, engine="x86")
        runner, _, _ = load_int8_runner(get_spec("squeezenet1_1"), tmp_path, engine="qnnpack")
        assert runner.module(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)
    finally:
        torch.backends.quantized.engine = "x86"  # the engine is process-wide; the other tests run x86


def test_eval_folder_reports_top1_top5_of_both(calib_clip: Path, tmp_path: Path) -> None:
    import cv2

    from edgeinfer.quant import quantize

    folder = tmp_path / "val"
    for c, name in enumerate(["n01440764", "n01443537"]):  # ImageNet's class 0 and 1 folder names
        (folder / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(folder / name / f"{i}.jpg"), synthetic_frame(10 * c + i))
    artifact = quantize(
        "squeezenet1_1",
        calib=calib_clip,
        out=tmp_path / "repo",
        weights=WeightsSource("random", seed=0),
        frames=8,
        latency_iterations=2,
        eval_dir=folder,
    )
    accuracy = artifact.meta["fidelity"]["accuracy"]
    assert set(accuracy) == {"fp32", "int8"}
    for acc in accuracy.values():
        assert acc["images"] == 6 and 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
    assert "fp32 accuracy" in artifact.report.table("t") and "int8 accuracy" in artifact.report.table("t")
