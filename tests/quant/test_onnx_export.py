"""ONNX artifacts: what ONNX Runtime makes of the QDQ graph (checked in its optimized graph, not trusted),
layers kept in fp32, the sidecar, and `edgequant --format onnx-fp32`."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from edgeinfer.quant.cli import main as edgequant
from edgeinfer.quant.onnx_export import OPSET, make_onnx_artifact
from edgeinfer.quant.quantize import Artifact
from edgeinfer.server import WeightsSource, get_spec
from edgeinfer.server.artifacts import SIDECAR, file_sha256
from edgeinfer.server.runtimes.onnx import OnnxRuntime
from edgeinfer.server.weights import build_model

pytestmark = pytest.mark.slow  # each export is a torch.export + a dynamo ONNX export (~10-20 s on 2 cores)

KEPT = "features.0"  # SqueezeNet's stem convolution


@pytest.fixture(scope="module")
def squeezenet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    out = tmp_path_factory.mktemp("repo")
    return make_onnx_artifact(
        "squeezenet",
        calib="synthetic",
        out=out,
        weights=WeightsSource("random", seed=0),
        fp32_layers=[KEPT],
        frames=16,
        latency_iterations=2,
    )


def optimized_graph(model: Path, tmp_path: Path) -> onnx.GraphProto:
    """The graph ORT actually runs, after its QDQ fusions."""
    optimized = tmp_path / "optimized.onnx"
    OnnxRuntime(model, threads=1, optimized_model_filepath=optimized)
    return onnx.load(str(optimized)).graph


def optimized_ops(model: Path, tmp_path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in optimized_graph(model, tmp_path).node)


def test_ort_fuses_every_quantized_conv_and_concat(squeezenet_onnx: Artifact, tmp_path: Path) -> None:
    ops = optimized_ops(squeezenet_onnx.folder / "model.onnx", tmp_path)
    # 26 convolutions (stem + 8 Fire modules x 3 + classifier), the stem kept in fp32:
    assert ops["QLinearConv"] == 25
    assert ops["QLinearConcat"] == 8  # one per Fire module
    float_convs = sum(ops[op] for op in ("Conv", "FusedConv", "NchwcConv"))
    assert float_convs == 1  # the kept layer, and only it


def test_concatenations_copy_bytes(squeezenet_onnx: Artifact, tmp_path: Path) -> None:
    """Each QLinearConcat's inputs are on its output's scale and zero point: ORT copies them, no requantization."""
    graph = optimized_graph(squeezenet_onnx.folder / "model.onnx", tmp_path)
    constants = {t.name: onnx.numpy_helper.to_array(t).item() for t in graph.initializer if not t.dims}
    concats = [node for node in graph.node if node.op_type == "QLinearConcat"]
    assert len(concats) == 8
    for node in concats:
        # inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
        out = (constants[node.input[0]], constants[node.input[1]])
        ins = [(constants[node.input[i + 1]], constants[node.input[i + 2]]) for i in range(2, len(node.input), 3)]
        assert len(ins) == 2 and all(qparams == out for qparams in ins), (node.name, out, ins)


def test_the_kept_layer_has_no_qdq_pair(squeezenet_onnx: Artifact) -> None:
    graph = onnx.load(str(squeezenet_onnx.folder / "model.onnx")).graph
    producers = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 26
    fed_by_dq = [
        all(producers.get(i) and producers[i].op_type == "DequantizeLinear" for i in c.input[:2]) for c in convs
    ]
    assert fed_by_dq.count(False) == 1 and fed_by_dq[0] is False  # the stem runs first


def test_sidecar_records_format_digest_and_fidelity_through_ort(squeezenet_onnx: Artifact) -> None:
    meta = _sidecar(squeezenet_onnx.folder)
    assert (meta["format"], meta["precision"], meta["runtime"], meta["opset"]) == ("onnx", "int8", "onnxruntime", OPSET)
    assert meta["sha256"] == file_sha256(squeezenet_onnx.folder / "model.onnx")
    assert meta["quantization"]["fp32_layers"] == [KEPT]
    assert meta["labels"] == get_spec("squeezenet").categories  # a board has no torchvision to read them from
    fidelity = meta["fidelity"]
    assert fidelity["frames"] == 4 and 0.0 <= fidelity["top1_agreement"] <= 1.0
    assert fidelity["sqnr_db"] > 15  # int8 logits of random weights, through ORT (~25 dB measured)
    assert fidelity["int8_bytes"] < fidelity["fp32_bytes"] / 2.5
    assert "onnxruntime" in fidelity["notes"][0]


def test_ort_int8_tracks_the_torch_fp32_model(squeezenet_onnx: Artifact) -> None:
    model = build_model(get_spec("squeezenet"), WeightsSource("random", seed=0))
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.inference_mode():
        reference = model(x).numpy()
    runtime = OnnxRuntime((squeezenet_onnx.folder / "model.onnx").read_bytes(), threads=1)
    approx = runtime.logits(x.numpy())  # a batch of 3: the batch dimension is dynamic
    assert approx.shape == (3, 1000)
    noise = np.sum((reference - approx) ** 2) / np.sum(reference**2)
    assert noise < 0.1  # within 10 dB of the fp32 logits on inputs it was never calibrated on


def test_unknown_fp32_layer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "squeezenet", "--calib", "synthetic", "--weights", "random", "--format", "onnx"]
    assert edgequant([*argv, "--out", str(tmp_path), "--fp32-layers", "features.99", "--frames", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "features.99" in err[0] and "features.0" in err[0]


def test_fp32_layers_need_an_int8_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (TorchScript int8 keeps fp32 layers too: tests/quant/test_mixed_precision.py)
    argv = ["--model", "squeezenet", "--calib", "synthetic", "--fp32-layers", "features.0", "--format", "onnx-fp32"]
    assert edgequant(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apply to int8 (--format torchscript or onnx)" in err[0]


def test_onnx_fp32_from_the_cli_matches_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "squeezenet1_1", "--calib", "synthetic", "--weights", "random", "--seed", "3"]
    assert edgequant([*argv, "--format", "onnx-fp32", "--out", str(tmp_path), "--frames", "8", "--json"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads(printed[printed.index("{") :])
    assert (meta["format"], meta["precision"], meta["flow"]) == ("onnx", "fp32", "export")
    assert (tmp_path / "squeezenet1_1" / "onnx-fp32" / "model.onnx").is_file()
    assert meta["fidelity"]["top1_agreement"] == 1.0 and meta["fidelity"]["sqnr_db"] > 60  # fp32 both sides


def _sidecar(folder: Path) -> dict:
    return json.loads((folder / SIDECAR).read_text())
