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

from edgeinfer.quant.artifact import write_sidecar
from edgeinfer.quant.calibration import CalibrationSet, load_frames, offline_preprocessor, read_image
from edgeinfer.quant.fidelity import (
    FidelityReport,
    agree_top1,
    agreement,
    evaluate_folder,
    interleaved_latency,
    logits,
    sqnr_db,
)
from edgeinfer.quant.flows import quantize_fx, quantize_pt2e
from edgeinfer.quant.intervals import paired_loss
from edgeinfer.server.artifacts import MODEL_FILES, artifact_dir, default_engine, file_sha256, quiet_deprecations
from edgeinfer.server.options import WeightsKind
from edgeinfer.server.preprocess import FrameImage, Preprocessor
from edgeinfer.server.registry import ModelSpec, Preprocessing, get_spec
from edgeinfer.server.weights import WeightsSource, build_model

__all__ = ["DEFAULT_FLOW", "Artifact", "prepare_for_int8", "quantize"]

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
) -> Artifact:
    """Quantize ``name`` to int8 and write its artifact under ``out``. See module docstring."""
    spec = get_spec(name)
    engine = engine or default_engine()
    flow = flow or DEFAULT_FLOW[spec.name]
    fp32 = build_model(spec, weights)
    model, preprocessing = prepare_for_int8(spec, copy.deepcopy(fp32), inception_transform)
    data: CalibrationSet = load_frames(calib, offline_preprocessor(preprocessing), count=frames)
    example = data.calibration[:1]

    bar = progress("calibrating", len(data.calibration)) if progress else None
    on_batch = (lambda n: bar.update(n)) if bar is not None else None
    folder = artifact_dir(out, spec.name, engine)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILES[flow]
    started = time.perf_counter()
    concat_stats: dict[str, int] = {}
    if flow == "fx":
        quantized: Any = quantize_fx(
            model, data.batches(), engine=engine, example=example, on_batch=on_batch, concat_stats=concat_stats
        )
        with quiet_deprecations():
            torch.jit.save(quantized, str(path))
    elif flow == "pt2e":
        quantize_pt2e(model, data.batches(), engine=engine, example=example, package_path=path, on_batch=on_batch)
        quantized = torch._inductor.aoti_load_package(str(path))
    else:
        raise ValueError(f"unknown flow {flow!r}; choose fx or pt2e")
    if bar is not None:
        bar.close()
    build_s = time.perf_counter() - started

    # The fp32 reference is the unmodified model on its own preprocessing: for a
    # folded Inception that is the same arithmetic, so this measures int8 alone.
    fp32_inputs = _reference_inputs(spec, data, preprocessing)
    reference = logits(fp32, fp32_inputs)
    approx = logits(quantized, data.held_out)
    top1, top5 = agreement(reference, approx)
    bar = progress("latency fp32 vs int8", latency_iterations) if progress else None
    latency = interleaved_latency(
        {"fp32": fp32, "int8": quantized},
        example,
        iterations=latency_iterations,
        on_step=(lambda: bar.update(1)) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    accuracy = None
    if eval_dir is not None:
        accuracy = _evaluate(spec, eval_dir, eval_limit, fp32, quantized, preprocessing)
    report = FidelityReport(
        frames=len(data.held_out),
        top1_agreement=top1,
        top5_overlap=top5,
        sqnr_db=sqnr_db(reference, approx),
        fp32_ms=latency["fp32"],
        int8_ms=latency["int8"],
        fp32_bytes=_state_bytes(fp32),
        int8_bytes=path.stat().st_size,
        accuracy=accuracy,
        random_weights=weights.kind is WeightsKind.RANDOM,
        loss=paired_loss([True] * len(reference), agree_top1(reference, approx), against="fp32").to_dict(),
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
        "calibration": {"source": data.source, "frames": len(data.calibration), "build_seconds": round(build_s, 1)},
        "concatenations": concat_stats or None,  # fx: how many, and how many still requantize (0: one scale each)
        "fidelity": report.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_sidecar(folder, meta)
    return Artifact(folder, meta, report)


def _reference_inputs(spec: ModelSpec, data: CalibrationSet, preprocessing: Preprocessing) -> torch.Tensor:
    original = spec.preprocessing
    if preprocessing == original:
        return data.held_out

    # Undo the folded normalization and apply the original one: same pixels, fp32 path.
    def stats(p: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)

    m_new, s_new = stats(preprocessing)
    m_old, s_old = stats(original)
    pixels = data.held_out * s_new + m_new
    return (pixels - m_old) / s_old


def _evaluate(
    spec: ModelSpec, folder: Path, limit: int | None, fp32: nn.Module, int8: Any, preprocessing: Preprocessing
) -> dict[str, dict[str, float]]:
    fp32_pre, int8_pre = offline_preprocessor(spec.preprocessing), offline_preprocessor(preprocessing)

    cache: dict[Path, FrameImage] = {}

    def run(pre: Preprocessor) -> Callable[[Path], torch.Tensor]:
        return lambda p: pre(cache[p] if p in cache else cache.setdefault(p, read_image(p))).tensor

    fp = evaluate_folder(folder, run(fp32_pre), {"fp32": fp32}, limit=limit)
    q = evaluate_folder(folder, run(int8_pre), {"int8": int8}, limit=limit)
    return {**fp, **q}
