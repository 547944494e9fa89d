"""Which runtime serves a model (``edgeserver --runtime auto|torch|onnxruntime``), decided without
importing either: so every mistake is one line naming the model, the runtime and the fix, said
before the daemon listens, and never a silent fall-back to another runtime than the one asked for.

``auto``: ONNX Runtime when the repository holds an ONNX artifact of that model and precision
(and onnxruntime is installed), else torch. OpenVINO is not among them: on the same .onnx it
measured 15-20% slower than ONNX Runtime on this machine's x86 (issue 27's survey: 0.80x
SqueezeNet, 0.85x ResNet50), so it would add an install and a code path for a loss.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgeinfer.server.artifacts import SIDECAR, onnx_artifact_dir
from edgeinfer.server.errors import InvalidRequest, WeightsUnavailable
from edgeinfer.server.model_names import served_name

__all__ = ["RUNTIME_CHOICES", "choose_runtime", "installed"]

RUNTIME_CHOICES = ("auto", "torch", "onnxruntime")
_PACKAGE = {"torch": "torch", "onnxruntime": "onnxruntime"}
_EXTRA = {"torch": "edgeinfer[server]", "onnxruntime": "edgeinfer[edge]"}


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s package can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(_PACKAGE[runtime]) is not None
    except (ImportError, ValueError):  # blocked (sys.modules[name] is None, or a finder refuses it)
        return False


def _onnx_present(repository: Path | None, name: str, precision: str) -> bool:
    return (onnx_artifact_dir(Path(repository or "model-repo"), name, precision) / SIDECAR).is_file()


def choose_runtime(name: str, precision: str, device: str, repository: Path | None, wanted: str = "auto") -> str:
    """The runtime for ``name`` at ``precision`` ("auto", "fp32", "fp16", "int8") on ``device``."""
    if wanted not in RUNTIME_CHOICES:
        raise InvalidRequest(f"unknown runtime {wanted!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    name = served_name(name)
    on_cpu = device.split(":")[0] == "cpu"
    fits_onnx = on_cpu and precision in ("auto", "fp32", "int8")
    onnx_precision = "fp32" if precision == "auto" else precision
    if wanted == "auto":
        if fits_onnx and installed("onnxruntime") and _onnx_present(repository, name, onnx_precision):
            return "onnxruntime"
        wanted = "torch"
        if not installed("torch"):
            repo = repository or "model-repo"
            raise WeightsUnavailable(
                f"{name} {onnx_precision}: no ONNX artifact in {repo} for onnxruntime, and the torch runtime is not "
                f"installed here; make one on a workstation (edgequant --model {name} --format "
                f"{'onnx' if onnx_precision == 'int8' else 'onnx-fp32'} --calib PATH --out {repo}) and copy it, "
                f"or pip install '{_EXTRA['torch']}'"
            )
    if wanted == "onnxruntime" and not fits_onnx:
        raise InvalidRequest(
            f"{name} {precision} on {device}: the onnxruntime runtime serves fp32 and int8 on the CPU; "
            f"use --runtime torch for {precision} on {device}"
        )
    if not installed(wanted):
        raise WeightsUnavailable(
            f"{name}: the {wanted} runtime is not installed here (no {_PACKAGE[wanted]} package): "
            f"pip install '{_EXTRA[wanted]}'"
            + (", or serve an ONNX artifact with --runtime onnxruntime" if wanted == "torch" else "")
        )
    return wanted
