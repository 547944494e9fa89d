"""Where a model's fp32 weights come from: ImageNet, a local file, or seeded random.

``--weights imagenet`` (the default) takes torchvision's ImageNet checkpoint from
the torch hub cache, downloading it when it is not there. ``--weights PATH`` loads
a state_dict with ``torch.load(weights_only=True)`` (no pickled code runs).
``--weights random`` must be asked for by name, with a seed: offline with no
path is an error that says how to fix it, never a silent fall-back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.options import WeightsKind
from edgeinfer.server.registry import ModelSpec, strip_training_heads

__all__ = ["WeightsSource", "build_model", "load_state_dict_file"]

# Training checkpoints often wrap the weights; these keys are unwrapped.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class WeightsSource:
    kind: WeightsKind
    path: Path | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WeightsKind(self.kind))  # a plain "random" works too

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> WeightsSource:
        if text == WeightsKind.IMAGENET:
            return cls(WeightsKind.IMAGENET)
        if text == WeightsKind.RANDOM:
            return cls(WeightsKind.RANDOM, seed=seed)
        return cls(WeightsKind.FILE, path=Path(text).expanduser())

    def describe(self, spec: ModelSpec) -> str:
        if self.kind is WeightsKind.IMAGENET:
            return f"imagenet:{spec.default_weights}"
        if self.kind is WeightsKind.RANDOM:
            return f"random:seed={self.seed}"
        return f"file:{self.path}"


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise WeightsUnavailable(
            f"{path} is not a state_dict that torch.load(weights_only=True) accepts: {exc}"
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"{path} does not hold a state_dict (a dict of tensors)")
    return obj


def _imagenet_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    weights = spec.default_weights
    try:
        # Reads the hub cache first ($TORCH_HOME/hub/checkpoints), downloads otherwise.
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsUnavailable(
            f"cannot get ImageNet weights for {spec.name} ({exc}). Either put {weights.url} at "
            f"{cache}, pass --weights PATH to a local state_dict, or pass --weights random "
            f"(meaningless predictions, for tests and demos)."
        ) from exc


def build_model(spec: ModelSpec, source: WeightsSource) -> nn.Module:
    """An fp32 model in eval mode on the CPU, with the weights ``source`` names."""
    if source.kind is WeightsKind.RANDOM:
        torch.manual_seed(source.seed)
        model = spec.build(weights=None)
    else:
        state = _imagenet_state_dict(spec) if source.kind is WeightsKind.IMAGENET else None
        if source.kind is WeightsKind.FILE:
            assert source.path is not None
            state = load_state_dict_file(source.path)
        model = spec.build(weights=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsUnavailable(f"weights from {source.describe(spec)} do not fit {spec.name}: {exc}") from exc
    return strip_training_heads(model).eval()
