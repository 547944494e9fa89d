"""ONNX artifacts a board can serve without torch: int8 QDQ (uint8 activations) or fp32.

int8: ``torch.export`` -> ``prepare_pt2e`` with :class:`BoardQuantizer` (per-channel
symmetric int8 weights, uint8 activations from a histogram observer) -> calibrate ->
``convert_pt2e`` -> ``torch.export`` -> ``torch.onnx.export(dynamo=True)``. ONNX Runtime
fuses the QDQ pairs into QLinear kernels. Layers named in ``fp32_layers`` keep no QDQ
pair and run in float (the accuracy budget's remedy).

An FX-quantized module cannot take this road (its packed conv params do not export), so
the graph is quantized again here, from the fp32 model, on the same calibration frames.
The fidelity report is measured through the runtime that will serve the file:
:class:`edgeinfer.server.runtimes.onnx.OnnxRuntime`, on the held-out frames.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from edgeinfer.quant.artifact import write_sidecar
from edgeinfer.quant.calibration import CalibrationSet, load_frames, offline_preprocessor
from edgeinfer.quant.fidelity import FidelityReport, agreement, interleaved_latency, logits, sqnr_db
from edgeinfer.quant.onnx_quantizer import BoardQuantizer, quantizable_layers
from edgeinfer.quant.quantize import Artifact, _reference_inputs, _state_bytes, prepare_for_int8
from edgeinfer.server.artifacts import ONNX_FILE, file_sha256, onnx_artifact_dir
from edgeinfer.server.registry import get_spec
from edgeinfer.server.runtimes.onnx import OnnxRuntime
from edgeinfer.server.weights import WeightsSource, build_model

__all__ = ["OPSET", "export_onnx", "make_onnx_artifact", "quantize_for_onnx"]

log = logging.getLogger(__name__)

OPSET = 21  # per-channel QDQ with uint8/int8 everywhere; ORT >= 1.17 runs it
MAX_BATCH = 64  # the exported batch dimension is dynamic, 1..MAX_BATCH


def _batch_dim() -> Any:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _export(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    # strict=True: torchvision's ResNet reuses one ReLU module per block, which the
    # non-strict exporter cannot attribute to single call sites (see quant/flows.py).
    example = example[:2] if len(example) >= 2 else torch.cat([example, example])  # batch 1 would specialise
    if not isinstance(model, torch.fx.GraphModule):  # a converted graph is in eval mode already (and refuses .eval())
        model = model.eval()
    return torch.export.export(model, (example,), dynamic_shapes=_batch_dim(), strict=True)


def quantize_for_onnx(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    *,
    example: torch.Tensor,
    fp32_layers: Iterable[str] = (),
    on_batch: Callable[[int], None] | None = None,
) -> nn.Module:
    """The model with QDQ pairs (a torch.fx GraphModule), calibrated; ``fp32_layers`` left in float."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    keep = list(fp32_layers)
    known = set(quantizable_layers(model))
    unknown = [name for name in keep if name not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:6])
        raise ValueError(f"fp32 layers {', '.join(unknown)} are not conv/linear layers of the model (e.g. {sample})")
    prepared = prepare_pt2e(_export(model, example).module(), BoardQuantizer(keep))
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            if on_batch:
                on_batch(batch.shape[0])
    return convert_pt2e(prepared)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (fp32, or quantized by :func:`quantize_for_onnx`) as ONNX with a dynamic batch."""
    program = _export(model, example)
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            program,
            (example[:1],),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path


def _ort_model(runtime: OnnxRuntime) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.from_numpy(runtime.logits(x.numpy()))


def make_onnx_artifact(
    name: str,
    *,
    calib: str | Path,
    out: Path,
    weights: WeightsSource,
    precision: str = "int8",
    fp32_layers: Iterable[str] = (),
    frames: int = 64,
    inception_transform: str = "fold",
    latency_iterations: int = 20,
    progress: Callable[[str, int], Any] | None = None,
) -> Artifact:
    """Export ``name`` to ONNX (``precision`` int8 or fp32) under ``out``; its fidelity measured through ORT."""
    if precision not in ("int8", "fp32"):
        raise ValueError(f"ONNX artifacts are int8 or fp32, not {precision!r}")
    spec = get_spec(name)
    fp32 = build_model(spec, weights)
    model, preprocessing = prepare_for_int8(spec, copy.deepcopy(fp32), inception_transform)
    data: CalibrationSet = load_frames(calib, offline_preprocessor(preprocessing), count=frames)
    example = data.calibration[:2]
    folder = onnx_artifact_dir(out, spec.name, precision)
    path = folder / ONNX_FILE
    kept = sorted(set(fp32_layers))
    started = time.perf_counter()
    if precision == "int8":
        bar = progress("calibrating", len(data.calibration)) if progress else None
        model = quantize_for_onnx(
            model,
            data.batches(),
            example=example,
            fp32_layers=kept,
            on_batch=(lambda n: bar.update(n)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
    export_onnx(model, example, path)
    build_s = time.perf_counter() - started

    runtime = OnnxRuntime(path.read_bytes(), threads=torch.get_num_threads())
    reference = logits(fp32, _reference_inputs(spec, data, preprocessing))
    approx = logits(_ort_model(runtime), data.held_out)
    top1, top5 = agreement(reference, approx)
    bar = progress(f"latency torch fp32 vs onnxruntime {precision}", latency_iterations) if progress else None
    latency = interleaved_latency(
        {"fp32": fp32, "onnx": _ort_model(runtime)},
        data.held_out[:1],
        iterations=latency_iterations,
        on_step=(lambda: bar.update(1)) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    report = FidelityReport(
        frames=len(data.held_out),
        top1_agreement=top1,
        top5_overlap=top5,
        sqnr_db=sqnr_db(reference, approx),
        fp32_ms=latency["fp32"],
        int8_ms=latency["onnx"],
        fp32_bytes=_state_bytes(fp32),
        int8_bytes=path.stat().st_size,
        notes=[
            f"measured through onnxruntime {runtime.version} ({precision}) against torch fp32"
            + (f"; fp32 layers: {', '.join(kept)}" if kept else "")
        ],
    )
    meta = {
        "model": spec.name,
        "architecture": spec.build.__name__.lstrip("_"),
        "format": "onnx",
        "precision": precision,
        "flow": "pt2e-qdq" if precision == "int8" else "export",
        "runtime": "onnxruntime",
        "checked_with": f"onnxruntime {runtime.version}",
        "opset": OPSET,
        "quantization": (
            {"weights": "int8 per-channel symmetric", "activations": "uint8 per-tensor, histogram", "fp32_layers": kept}
            if precision == "int8"
            else None
        ),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "input_size": preprocessing.crop_size,
        "preprocessing": preprocessing.to_dict(),
        "inception_transform": inception_transform if spec.name == "inception_v3" else None,
        # The board has no torchvision to read the labels from: they travel in the sidecar.
        "labels": spec.categories,
        "num_classes": len(spec.categories),
        "weights": weights.describe(spec),
        "max_batch": MAX_BATCH,
        "calibration": {
            "source": data.source,
            "frames": len(data.calibration) if precision == "int8" else 0,
            "build_seconds": round(build_s, 1),
        },
        "fidelity": report.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_sidecar(folder, meta)
    log.debug("wrote %s (%d bytes, %s)", path, path.stat().st_size, np.round(build_s, 1))
    return Artifact(folder, meta, report)
