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

from edgeinfer.quant.artifact import staged_folder, write_sidecar
from edgeinfer.quant.budget import Plan
from edgeinfer.quant.calibration import CalibrationSet, load_frames, offline_preprocessor
from edgeinfer.quant.fake_quant import residual_blocks
from edgeinfer.quant.fidelity import FidelityReport, agreement, interleaved_latency, logits, sqnr_db
from edgeinfer.quant.mixed import check_layers, choose
from edgeinfer.quant.onnx_quantizer import BoardQuantizer, quantizable_layers
from edgeinfer.quant.quantize import (
    MAX_CALIBRATION,
    SENSITIVITY_CHART,
    Artifact,
    _accuracy,
    _state_bytes,
    judge_losses,
    prepare_for_int8,
    reference_inputs,
    speed_line,
)
from edgeinfer.server.artifacts import ONNX_FILE, file_sha256, onnx_artifact_dir
from edgeinfer.server.options import WeightsKind
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
    known = set(quantizable_layers(model)) | set(residual_blocks(model))
    unknown = [name for name in keep if name not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:6])
        raise ValueError(
            f"fp32 layers {', '.join(unknown)} are not conv/linear layers or residual blocks of the model "
            f"(e.g. {sample})"
        )
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
    max_loss: float | None = None,
    sensitivity: bool = False,
    eval_dir: Path | None = None,
    eval_limit: int | None = None,
) -> Artifact:
    """Export ``name`` to ONNX (``precision`` int8 or fp32) under ``out``; its fidelity measured through ORT.

    int8 only: ``fp32_layers`` keep no QDQ pair; ``max_loss`` searches for them (each candidate
    exported and measured through ONNX Runtime); ``sensitivity`` ranks every layer. The
    artifact is written to a temporary folder and renamed into place when complete.
    """
    if precision not in ("int8", "fp32"):
        raise ValueError(f"ONNX artifacts are int8 or fp32, not {precision!r}")
    spec = get_spec(name)
    fp32 = build_model(spec, weights)
    model, preprocessing = prepare_for_int8(spec, copy.deepcopy(fp32), inception_transform)
    check_layers(model, list(fp32_layers))
    data: CalibrationSet = load_frames(calib, offline_preprocessor(preprocessing), count=frames)
    example = data.calibration[:2]

    def to_fp32(x: torch.Tensor) -> torch.Tensor:
        return reference_inputs(spec, x, preprocessing)

    judge, labelled = judge_losses(
        fp32, to_fp32, data.held_out, preprocessing, spec, eval_dir=eval_dir, eval_limit=eval_limit, max_loss=max_loss
    )
    folder = onnx_artifact_dir(out, spec.name, precision)
    with staged_folder(folder) as stage:
        started = time.perf_counter()
        outcome = None
        if precision == "int8":
            candidates: dict[Plan, tuple[Path, OnnxRuntime]] = {}

            def build(plan: Plan) -> Callable[[torch.Tensor], torch.Tensor]:
                q = quantize_for_onnx(
                    copy.deepcopy(model),
                    data.batches(limit=MAX_CALIBRATION),
                    example=example,
                    fp32_layers=plan.fp32_layers,
                )
                path = export_onnx(q, example, stage / f"candidate-{len(candidates)}.onnx")
                candidates[plan] = (path, OnnxRuntime(path.read_bytes(), threads=torch.get_num_threads()))
                return _ort_model(candidates[plan][1])

            outcome = choose(
                model,
                build,
                judge,
                lambda: data.batches(limit=MAX_CALIBRATION),
                fp32_layers=sorted(set(fp32_layers)),
                max_loss=max_loss,
                sensitivity=sensitivity,
                reduce_range=False,  # uint8 0..255 activations, as BoardQuantizer makes them
                observers=("histogram",),  # BoardQuantizer's one observer: the budget goes to fp32 layers
                chart_path=stage / SENSITIVITY_CHART,
                title=f"{spec.name} ONNX ({weights.describe(spec)}): per-layer sensitivity",
            )
            path, runtime = candidates[outcome.plan]
            path.rename(stage / ONNX_FILE)
            for other, _ in candidates.values():
                other.unlink(missing_ok=True)
        else:
            export_onnx(model, example, stage / ONNX_FILE)
            runtime = OnnxRuntime((stage / ONNX_FILE).read_bytes(), threads=torch.get_num_threads())
        path = stage / ONNX_FILE
        build_s = time.perf_counter() - started
        kept = list(outcome.plan.fp32_layers) if outcome else []

        reference = judge.reference if labelled is None else logits(fp32, to_fp32(data.held_out))
        approx = logits(_ort_model(runtime), data.held_out)
        top1, top5 = agreement(reference, approx)
        judged = logits(_ort_model(runtime), judge.inputs) if labelled is not None else approx
        loss = judge.loss_of(judged)
        models: dict[str, Any] = {"fp32": fp32, "onnx": _ort_model(runtime)}
        if outcome is not None and outcome.plain_model is not None and outcome.plan.fp32_layers:
            models = {"fp32": fp32, "int8": outcome.plain_model, "onnx": _ort_model(runtime)}
        bar = progress(f"latency torch fp32 vs onnxruntime {precision}", latency_iterations) if progress else None
        latency = interleaved_latency(
            models,
            data.held_out[:1],
            iterations=latency_iterations,
            on_step=(lambda: bar.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        notes = outcome.lines(judge) if outcome else []
        if "int8" in latency:
            notes.append(speed_line({"fp32": latency["fp32"], "int8": latency["int8"], "mixed": latency["onnx"]}))
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
                + (f"; fp32 layers: {', '.join(kept)}" if kept else ""),
                *notes,
            ],
            accuracy=_accuracy(judge, judged) if labelled is not None else None,
            random_weights=weights.kind is WeightsKind.RANDOM,
            loss=loss.to_dict(),
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
                {
                    "weights": "int8 per-channel symmetric",
                    "activations": "uint8 per-tensor, histogram",
                    "fp32_layers": kept,
                }
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
                "frames": min(len(data.calibration), MAX_CALIBRATION) if precision == "int8" else 0,
                "build_seconds": round(build_s, 1),
            },
            "fidelity": report.to_dict(),
            "mixed_precision": (
                {**outcome.to_dict(), "latency_ms": latency}
                if outcome and (kept or max_loss is not None or sensitivity)
                else None
            ),
            "eval": {"images": judge.frames, "skipped": labelled.skipped, "classes": labelled.classes}
            if labelled
            else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if not (outcome and outcome.sensitivity):
            (stage / SENSITIVITY_CHART).unlink(missing_ok=True)
        write_sidecar(stage, meta)
    log.debug("wrote %s (%d bytes, %s)", folder / ONNX_FILE, meta["file_bytes"], np.round(build_s, 1))
    return Artifact(folder, meta, report)
