"""Mixed precision: fp32 layers survive into the served artifact, the budget search's order, bad input."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeinfer.quant.accuracy import Judge
from edgeinfer.quant.budget import Plan, search
from edgeinfer.quant.fake_quant import quantizable_layers
from edgeinfer.quant.quantize import quantize
from edgeinfer.server import WeightsSource, get_spec
from edgeinfer.server.artifacts import load_int8_runner, read_sidecar
from edgeinfer.server.weights import build_model
from helpers import synthetic_frame


def _ops(module: torch.jit.ScriptModule) -> collections.Counter[str]:
    return collections.Counter(re.findall(r"(aten::\w+|quantized::\w+)", str(module.inlined_graph)))


@pytest.mark.slow
def test_fp32_layers_survive_into_the_torchscript_artifact_with_a_sensitivity_report(tmp_path: Path) -> None:
    artifact = quantize(
        "squeezenet1_1",
        calib="synthetic",
        out=tmp_path,
        weights=WeightsSource("random", seed=0),
        frames=8,
        latency_iterations=2,
        fp32_layers=["features.0", "classifier.1"],
        sensitivity=True,
    )
    runner, _, _ = load_int8_runner(get_spec("squeezenet1_1"), tmp_path)
    ops = _ops(runner.module)
    # 26 convolutions, two kept in fp32: 24 int8 conv+ReLU kernels, 2 float convolutions served as such.
    assert ops["quantized::conv2d_relu"] == 24
    assert ops["aten::_convolution"] + ops["aten::conv2d"] == 2
    mixed = read_sidecar(artifact.folder)["mixed_precision"]
    assert mixed["fp32_layers"] == ["features.0", "classifier.1"] and mixed["budget"] is None
    rows = mixed["sensitivity"]
    layers = quantizable_layers(build_model(get_spec("squeezenet1_1"), WeightsSource("random", seed=0)))
    assert sorted(r["layer"] for r in rows) == sorted(layers) and len(rows) == 26
    gains = [r["only_fp32_sqnr_db"] for r in rows]
    assert gains == sorted(gains, reverse=True)  # most sensitive (reverting it gains most) first
    assert (artifact.folder / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = artifact.report.table("t")
    assert "kept in fp32 (asked for): features.0, classifier.1" in table and "per-layer sensitivity" in table
    assert not [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no staging folder left


def _judge(frames: int = 100) -> Judge:
    reference = torch.zeros(frames, 3)
    reference[:, 0] = 1.0  # fp32 says class 0 everywhere
    return Judge(torch.arange(frames, dtype=torch.float32)[:, None], reference)


def _flipping(plan: Plan) -> object:
    """A model that changes the answer on a number of frames that depends on the plan."""
    cost = {"a": 2, "b": 6, "c": 1}
    flips = sum(v for k, v in cost.items() if k not in plan.fp32_layers) - (plan.observer == "minmax")

    def model(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3)
        out[:, 0] = 1.0
        out[x[:, 0] < flips, 1] = 2.0
        return out

    return model


def test_budget_tries_the_observer_then_reverts_the_most_sensitive_layer_first() -> None:
    ranked: list[Plan] = []

    def rerank(plan: Plan) -> list[str]:
        ranked.append(plan)
        return [n for n in ("b", "a", "c") if n not in plan.fp32_layers]

    result = search(_flipping, _judge(), max_loss=1.5, rerank=rerank, layers=["a", "b", "c"])
    whys = ["everything int8", "minmax activation observer", "b back to fp32", "a back to fp32"]
    assert [s.why for s in result.steps] == whys and [round(s.loss.points) for s in result.steps] == [9, 8, 2, 0]
    assert result.met and result.chosen.plan == Plan("minmax", ("b", "a"))
    result = search(_flipping, _judge(), max_loss=2.0, rerank=rerank, layers=["a", "b", "c"])
    assert result.met and result.chosen.plan == Plan("minmax", ("b",)) and result.chosen.loss.points == 2.0
    assert [round(s.loss.points) for s in result.steps] == [9, 8, 2]
    only = ("histogram",)  # no observer remedy: every layer must go back
    result = search(_flipping, _judge(), max_loss=0.0, rerank=rerank, layers=["a", "b", "c"], observers=only)
    assert result.met and result.chosen.plan.fp32_layers == ("b", "a", "c") and result.chosen.loss.points == 0.0
    assert ranked[-1] == Plan("histogram", ("b", "a"))  # re-ranked under each new fp32 set


def test_budget_met_at_once_builds_once() -> None:
    builds: list[Plan] = []

    def build(plan: Plan) -> object:
        builds.append(plan)
        return _flipping(Plan(plan.observer, ("a", "b", "c")))

    result = search(build, _judge(), max_loss=0.3, rerank=lambda p: [], layers=["a", "b", "c"])
    assert result.met and builds == [Plan("histogram")] and result.chosen.loss.points == 0.0


def _edgequant(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer.quant.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("edgequant")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-loss", "-1"], "edgequant: --max-loss -1: no budget below 0 points can be met"),
        (["--max-loss", "0.3", "--flow", "pt2e"], "need --flow fx (or --format onnx)"),
        (["--sensitivity", "--format", "onnx-fp32"], "apply to int8"),
        (["--eval", "/nonexistent"], "--eval /nonexistent: not a folder"),
    ],
)
def test_argument_mistakes_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = _edgequant("--model", "squeezenet", "--calib", "synthetic", "--out", str(tmp_path / "repo"), *args)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_bad_input_found_later_is_one_line_exit_2_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    import cv2

    repo = tmp_path / "repo"
    common = ["--model", "squeezenet1_1", "--calib", "synthetic", "--weights", "random", "--out", str(repo)]
    out = _edgequant(*common, "--frames", "8", "--fp32-layers", "features.0,nonsense")
    assert (
        out.returncode == 2
        and _lines(out.stderr) == [_lines(out.stderr)[0]]
        and "--fp32-layers nonsense: not a conv/linear layer" in out.stderr
    ), out.stderr
    out = _edgequant(*common, "--frames", "16", "--max-loss", "0.3")
    assert out.returncode == 2 and "--max-loss needs at least 50 frames" in out.stderr, out.stderr
    evals = tmp_path / "val"
    for c in range(1001):  # more classes than the model has
        (evals / f"c{c:04d}").mkdir(parents=True)
    out = _edgequant(*common, "--frames", "8", "--eval", str(evals))
    assert out.returncode == 2 and "1001 class folders but the model has 1000 classes" in out.stderr, out.stderr
    assert not repo.exists() or not any(repo.rglob("*"))
    # Unreadable files are skipped with a line each and a count, as edgeclient --images does.
    evals = tmp_path / "val2"
    for c in range(2):
        (evals / f"c{c}").mkdir(parents=True)
        cv2.imwrite(str(evals / f"c{c}" / "ok.jpg"), synthetic_frame(c))
    (evals / "c0" / "notes.jpg").write_text("not a picture")
    out = _edgequant(*common, "--frames", "8", "--eval", str(evals), "--latency-iterations", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert "skipped 1 unreadable file(s) of 3" in out.stderr and "notes.jpg" in out.stderr
    meta = json.loads(out.stdout[out.stdout.index("{") :])
    assert meta["eval"] == {"images": 2, "skipped": 1, "classes": 2}
    assert meta["fidelity"]["loss"]["against"] == "labels" and meta["fidelity"]["loss"]["frames"] == 2


@pytest.mark.slow
def test_the_budget_runs_through_onnx_runtime_for_the_onnx_format(tmp_path: Path) -> None:
    from edgeinfer.quant.onnx_export import make_onnx_artifact

    artifact = make_onnx_artifact(
        "squeezenet1_1",
        calib="synthetic",
        out=tmp_path,
        weights=WeightsSource("random", seed=0),
        frames=200,  # 50 held out: the least --max-loss accepts
        latency_iterations=1,
        max_loss=0.3,
    )
    mixed = read_sidecar_json(artifact.folder)["mixed_precision"]
    budget = mixed["budget"]
    # Random weights answer alike in fp32 and int8 (the loss is 0 of 50): met by the first ORT build,
    # and the report still says 50 frames cannot show a 0.3-point budget is met.
    assert budget["max_loss"] == 0.3 and budget["met"] and len(budget["steps"]) == 1
    assert budget["steps"][0]["why"] == "everything int8" and budget["steps"][0]["loss"]["frames"] == 50
    assert mixed["verdict"] == "cannot tell" and mixed["frames_needed"] > 1000
    assert "CANNOT TELL from 50 frames" in artifact.report.table("t")
    assert sorted(p.name for p in artifact.folder.iterdir()) == ["edgeinfer.json", "model.onnx"]


def read_sidecar_json(folder: Path) -> dict:
    return json.loads((folder / "edgeinfer.json").read_text())


def test_calibration_uses_at_most_the_cap_spread_over_all_frames() -> None:
    from edgeinfer.quant.calibration import CalibrationSet

    frames = torch.arange(1500, dtype=torch.float32).view(1500, 1, 1, 1)
    data = CalibrationSet(frames, frames[:1], "t")
    used = torch.cat(list(data.batches(limit=256))).flatten()
    assert len(used) == 256 and used[0] == 0 and used[-1] == 1499  # evenly spread, ends included
    assert len(torch.cat(list(data.batches()))) == 1500


def test_a_budget_not_met_keeps_the_least_loss_seen_never_a_worse_plan() -> None:
    def build(plan: Plan) -> object:  # the other observer and reverting "a" both make it worse
        worse = (plan.observer == "minmax") * 3 + ("a" in plan.fp32_layers) * 1
        return _flipping(Plan(plan.observer, ("b", "c")) if not worse else Plan("histogram", ("c",)))

    result = search(
        build, _judge(), max_loss=0.5, rerank=lambda p: ["a", "b", "c"], layers=["a", "b", "c"], max_builds=3
    )
    assert not result.met and [round(s.loss.points) for s in result.steps] == [2, 8, 8]
    assert result.chosen.plan == Plan("histogram") and result.chosen.loss.points == 2.0
    assert result.model is result.chosen.model
