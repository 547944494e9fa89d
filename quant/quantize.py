"""The quantization pipeline behind ``edgequant``: one model in, one artifact out.

fp32 model -> model-specific preparation (Inception's input transform) ->
calibration frames through the daemon's preprocessing -> fx or pt2e flow ->
artifact + sidecar -> fidelity report on held-out frames.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from edgeinfer.quant.accuracy import Judge, LabelledFrames, load_labelled, make_judge
from edgeinfer.quant.artifact import staged_folder, write_sidecar
from edgeinfer.quant.budget import Plan
from edgeinfer.quant.calibration import CalibrationSet, load_frames, offline_preprocessor
from edgeinfer.quant.fidelity import (
    FidelityReport,
    agreement,
    interleaved_latency,
    logits,
    sqnr_db,
)
from edgeinfer.quant.flows import OBSERVERS, quantize_fx, quantize_pt2e
from edgeinfer.quant.mixed import MixedOutcome, check_layers, choose
from edgeinfer.server.artifacts import MODEL_FILES, artifact_dir, default_engine, file_sha256, quiet_deprecations
from edgeinfer.server.options import WeightsKind
from edgeinfer.server.registry import ModelSpec, Preprocessing, get_spec
from edgeinfer.server.weights import WeightsSource, build_model

__all__ = [
    "DEFAULT_FLOW",
    "MIN_BUDGET_FRAMES",
    "SENSITIVITY_CHART",
    "Artifact",
    "judge_losses",
    "prepare_for_int8",
    "quantize",
]

# Fewer frames than this cannot resolve any budget a user would set (one frame = 2 points).
MIN_BUDGET_FRAMES = 50
# Calibration uses at most this many frames (spread evenly): ranges settle long before, and a
# --frames 2000 run (500 held out, for a loss that resolves 0.3 points) would calibrate 1,500
# frames per build of the budget search otherwise.
MAX_CALIBRATION = 256
SENSITIVITY_CHART = "sensitivity.png"

log = logging.getLogger(__name__)

# Chosen by bench/quant_flows.py (interleaved batch-1 medians of fp32, fx and pt2e; the
# figures are in bench/results/README.md): fx was the fastest for every model and builds in
# seconds instead of a minute; pt2e's SQNR was a little higher on some, not worth its latency.
DEFAULT_FLOW = {
    "squeezenet1_0": "fx",
    "squeezenet1_1": "fx",
    "vgg16": "fx",
    "inception_v3": "fx",
    "resnet50": "fx",
}


@dataclass
class Artifact:
    folder: Path
    meta: dict[str, Any]
    report: FidelityReport


def prepare_for_int8(
    spec: ModelSpec, model: nn.Module, inception_transform: str = "fold"
) -> tuple[nn.Module, Preprocessing]:
    """Model-specific changes before quantization; returns the model and its preprocessing.

    Inception v3 with ImageNet weights re-normalizes its input inside forward()
    (``transform_input``): x * std/0.5 + (mean - 0.5)/0.5 per channel. "fold" moves
    that affine map into the preprocessing (normalize with mean 0.5, std 0.5, which
    is the same arithmetic) so the int8 graph starts at the first convolution;
    "keep" leaves it in the graph for the quantizer to handle.
    """
    pre = spec.preprocessing
    if inception_transform == "fold" and getattr(model, "transform_input", False):
        model.transform_input = False
        pre = dataclasses.replace(pre, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return model, pre


def _state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def quantize(
    name: str,
    *,
    calib: str | Path,
    out: Path,
    weights: WeightsSource,
    engine: str | None = None,
    flow: str | None = None,
    frames: int = 64,
    eval_dir: Path | None = None,
    eval_limit: int | None = None,
    inception_transform: str = "fold",
    latency_iterations: int = 20,
    progress: Callable[[str, int], Any] | None = None,
    fp32_layers: list[str] | None = None,
    max_loss: float | None = None,
    sensitivity: bool = False,
) -> Artifact:
    """Quantize ``name`` to int8 and write its artifact under ``out``. See module docstring.

    fp32_layers: conv/linear layers kept in fp32; max_loss: the accuracy budget in top-1 points
    (:mod:`edgeinfer.quant.budget`); sensitivity: rank every layer (table, sidecar, PNG chart).
    The artifact is written to a temporary folder and renamed into place when complete.
    """
    spec = get_spec(name)
    engine = engine or default_engine()
    flow = flow or DEFAULT_FLOW[spec.name]
    mixing = bool(fp32_layers) or max_loss is not None or sensitivity
    if mixing and flow != "fx":
        raise ValueError("--fp32-layers, --max-loss and --sensitivity need --flow fx (or --format onnx)")
    fp32 = build_model(spec, weights)
    model, preprocessing = prepare_for_int8(spec, copy.deepcopy(fp32), inception_transform)
    check_layers(model, list(fp32_layers or []))
    data: CalibrationSet = load_frames(calib, offline_preprocessor(preprocessing), count=frames)
    example = data.calibration[:1]

    def to_fp32(x: torch.Tensor) -> torch.Tensor:
        return reference_inputs(spec, x, preprocessing)

    judge, labelled = judge_losses(
        fp32, to_fp32, data.held_out, preprocessing, spec, eval_dir=eval_dir, eval_limit=eval_limit, max_loss=max_loss
    )

    folder = artifact_dir(out, spec.name, engine)
    with staged_folder(folder) as stage:
        path = stage / MODEL_FILES[flow]
        bar = progress("building", 1) if progress else None
        started = time.perf_counter()
        concat_stats: dict[str, int] = {}
        outcome: MixedOutcome | None = None
        if flow == "fx":

            def build(plan: Plan) -> Any:
                return quantize_fx(
                    copy.deepcopy(model),
                    data.batches(limit=MAX_CALIBRATION),
                    engine=engine,
                    example=example,
                    observer=plan.observer,
                    fp32_layers=plan.fp32_layers,
                    concat_stats=concat_stats,
                )

            outcome = choose(
                model,
                build,
                judge,
                lambda: data.batches(limit=MAX_CALIBRATION),
                fp32_layers=list(fp32_layers or []),
                max_loss=max_loss,
                sensitivity=sensitivity,
                reduce_range=engine == "x86",
                observers=OBSERVERS,
                chart_path=stage / SENSITIVITY_CHART,
                title=f"{spec.name} ({weights.describe(spec)}): per-layer sensitivity",
                on_step=(lambda st: bar.set_postfix_str(f"{st.why}: {st.loss.points:+.2f}")) if bar else None,
            )
            quantized: Any = outcome.model
            with quiet_deprecations():
                torch.jit.save(quantized, str(path))
        elif flow == "pt2e":
            quantize_pt2e(model, data.batches(limit=MAX_CALIBRATION), engine=engine, example=example, package_path=path)
            quantized = torch._inductor.aoti_load_package(str(path))
        else:
            raise ValueError(f"unknown flow {flow!r}; choose fx or pt2e")
        if bar is not None:
            bar.close()
        build_s = time.perf_counter() - started

        # The fp32 reference is the unmodified model on its own preprocessing: for a
        # folded Inception that is the same arithmetic, so this measures int8 alone.
        reference = judge.reference if labelled is None else logits(fp32, to_fp32(data.held_out))
        approx = logits(quantized, data.held_out)
        top1, top5 = agreement(reference, approx)
        judged = None
        if labelled is not None:
            judged = logits(quantized, judge.inputs, batch=16)
            loss = judge.loss_of(judged)
        else:
            loss = outcome.loss if outcome else judge.loss_of(approx)
        models = {"fp32": fp32, "int8": quantized}
        if outcome is not None and outcome.plain_model is not None and outcome.plan.fp32_layers:
            models = {"fp32": fp32, "int8": outcome.plain_model, "mixed": quantized}
        bar = progress(f"latency {' vs '.join(models)}", latency_iterations) if progress else None
        latency = interleaved_latency(
            models,
            example,
            iterations=latency_iterations,
            on_step=(lambda: bar.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        notes = outcome.lines(judge) if outcome else []
        if "mixed" in latency:
            notes.append(speed_line(latency))
        report = FidelityReport(
            frames=len(data.held_out),
            top1_agreement=top1,
            top5_overlap=top5,
            sqnr_db=sqnr_db(reference, approx),
            fp32_ms=latency["fp32"],
            int8_ms=latency.get("mixed", latency["int8"]),
            fp32_bytes=_state_bytes(fp32),
            int8_bytes=path.stat().st_size,
            accuracy=_accuracy(judge, judged) if labelled is not None else None,
            random_weights=weights.kind is WeightsKind.RANDOM,
            loss=loss.to_dict(),
            notes=notes,
        )
        meta = {
            "model": spec.name,
            "architecture": spec.build.__name__.lstrip("_"),
            "precision": "int8",
            "format": "torchscript" if flow == "fx" else "aoti",
            "runtime": "torch",
            "flow": flow,
            "engine": engine,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "file": path.name,
            "file_bytes": report.int8_bytes,
            "sha256": file_sha256(path),  # the daemon loads the file only if it still has this digest
            "input_size": preprocessing.crop_size,
            "preprocessing": preprocessing.to_dict(),
            "inception_transform": inception_transform if spec.name == "inception_v3" else None,
            "labels": f"torchvision:{spec.default_weights}",
            "num_classes": len(spec.categories),
            "weights": weights.describe(spec),
            "max_batch": 1 if flow == "pt2e" else 0,  # 0: any batch size
            "calibration": {
                "source": data.source,
                "frames": min(len(data.calibration), MAX_CALIBRATION),
                "build_seconds": round(build_s, 1),
            },
            "concatenations": concat_stats or None,
            "mixed_precision": {**outcome.to_dict(), "latency_ms": latency} if outcome and mixing else None,
            "eval": {"images": judge.frames, "skipped": labelled.skipped, "classes": labelled.classes}
            if labelled
            else None,  # fx: how many, and how many still requantize (0: one scale each)
            "fidelity": report.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if not (outcome and outcome.sensitivity):
            (stage / SENSITIVITY_CHART).unlink(missing_ok=True)
        write_sidecar(stage, meta)
    return Artifact(folder, meta, report)


def reference_inputs(spec: ModelSpec, x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """``x`` (preprocessed for the int8 model) as fp32's own preprocessing would have made it."""
    original = spec.preprocessing
    if preprocessing == original:
        return x

    # Undo the folded normalization and apply the original one: same pixels, fp32 path.
    def stats(p: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)

    m_new, s_new = stats(preprocessing)
    m_old, s_old = stats(original)
    return (x * s_new + m_new - m_old) / s_old


def _reference_inputs(spec: ModelSpec, data: CalibrationSet, preprocessing: Preprocessing) -> torch.Tensor:
    return reference_inputs(spec, data.held_out, preprocessing)


def _accuracy(judge: Judge, approx: torch.Tensor) -> dict[str, dict[str, float]]:
    assert judge.labels is not None
    out = {}
    for name, lg in (("fp32", judge.reference), ("int8", approx)):
        top5 = lg.topk(5, 1).indices
        out[name] = {
            "top1": float((top5[:, 0] == judge.labels).float().mean()),
            "top5": float((top5 == judge.labels[:, None]).any(1).float().mean()),
            "images": judge.frames,
        }
    return out


def speed_line(latency: dict[str, float]) -> str:
    fp32 = latency["fp32"]
    return (
        f"speed (batch 1, interleaved medians): fp32 {fp32:.1f} ms, all-int8 {latency['int8']:.1f} ms "
        f"({fp32 / latency['int8']:.1f}x), this mixed artifact {latency['mixed']:.1f} ms "
        f"({fp32 / latency['mixed']:.1f}x)"
    )


def judge_losses(
    fp32: nn.Module,
    to_fp32: Callable[[torch.Tensor], torch.Tensor],
    held_out: torch.Tensor,
    preprocessing: Any,
    spec: Any,
    *,
    eval_dir: Path | None,
    eval_limit: int | None,
    max_loss: float | None,
) -> tuple[Judge, LabelledFrames | None]:
    """What every loss is measured on: ``eval_dir``'s labelled images, else the held-out frames against
    fp32's own answers. ``max_loss`` needs at least MIN_BUDGET_FRAMES of them (ValueError: one line)."""
    labelled = None
    if eval_dir is not None:
        pre = offline_preprocessor(preprocessing)
        labelled = load_labelled(eval_dir, pre, num_classes=len(spec.categories), limit=eval_limit)
        judge = make_judge(labelled.inputs, fp32, to_fp32, labelled.labels)
    else:
        judge = make_judge(held_out, fp32, to_fp32, None)
    if max_loss is not None and judge.frames < MIN_BUDGET_FRAMES:
        raise ValueError(
            f"--max-loss needs at least {MIN_BUDGET_FRAMES} frames to measure a loss on; it has {judge.frames} "
            f"(raise --frames: a quarter is held out; or give --eval DIR)"
        )
    return judge, labelled
