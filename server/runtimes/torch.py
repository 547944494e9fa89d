"""The torch runtime: torchvision fp32, CUDA fp16 (channels_last, CUDA graphs) and int8 TorchScript /
AOTInductor artifacts. The daemon reaches torch only through this module (server/loading.py imports
it for a model whose runtime is torch), so a daemon whose models are all ONNX never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeinfer.server.artifacts import load_int8_runner
from edgeinfer.server.errors import InvalidRequest
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.loading import BuiltRunner
from edgeinfer.server.options import Precision
from edgeinfer.server.preprocess import Preprocessor
from edgeinfer.server.registry import get_spec
from edgeinfer.server.runner import ModelRunner
from edgeinfer.server.weights import WeightsSource, build_model

__all__ = ["build_runner", "make_preprocessor", "prepare_device"]


def prepare_device(device: str | torch.device, *, cuda_graphs: bool) -> torch.device:
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise InvalidRequest(f"--cuda-graphs replays GPU work: it needs --device cuda, not {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequest("--device cuda asked for, but torch sees no CUDA device here")
        # A served model sees one input shape per batch size: let cuDNN pick its
        # fastest kernels once (during warm-up) instead of a generic default.
        torch.backends.cudnn.benchmark = True
    return device


def build_runner(
    name: str, precision: Precision, device: torch.device, weights: WeightsSource, repository: Path | None
) -> BuiltRunner:
    """The runner for one (model, precision): an int8 artifact from ``repository``, or fp32/fp16 weights."""
    spec = get_spec(name)
    described = {"architecture": spec.build.__name__.lstrip("_"), "categories": spec.categories}
    if precision is Precision.INT8:
        runner, preprocessing, meta = load_int8_runner(spec, repository)
        return BuiltRunner(
            runner,
            preprocessing,
            meta["weights"],
            meta["engine"],
            meta.get("fidelity"),
            meta.get("max_batch"),
            **described,
        )
    module = build_model(spec, weights)
    if precision is Precision.FP16:
        module = module.to(device=device, dtype=torch.float16, memory_format=torch.channels_last)
        runner = ModelRunner(module, device=device, dtype=torch.float16, channels_last=True)
    else:
        runner = ModelRunner(module.to(device), device=device)
    return BuiltRunner(runner, spec.preprocessing, weights.describe(spec), **described)


def make_preprocessor(built: BuiltRunner, device: torch.device, limits: FrameLimits) -> Preprocessor:
    runner = built.runner
    assert isinstance(runner, ModelRunner)
    return Preprocessor(built.preprocessing, device=device, dtype=runner.dtype, limits=limits)
