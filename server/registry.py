"""The seed models: which names we serve and how to build each one.

A registry filled by a decorator, in the manner of torchvision's ``models._api``:
one builder per model, duplicate names and aliases refused at import time.
Labels, input size and preprocessing are read from torchvision's weights
metadata, which ships inside the package and needs no download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from edgeinfer.server.errors import ModelNotFound
from edgeinfer.server.frames import Preprocessing

__all__ = [
    "ModelSpec",
    "Preprocessing",
    "get_spec",
    "known_models",
    "list_models",
    "register_model",
    "strip_training_heads",
]


Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A servable architecture: its names, its torchvision weights enum and its builder."""

    name: str
    aliases: tuple[str, ...]
    weights_enum: type[WeightsEnum]
    build: Builder = field(repr=False)

    @property
    def default_weights(self) -> WeightsEnum:
        return self.weights_enum.DEFAULT  # type: ignore[attr-defined, no-any-return]

    @property
    def categories(self) -> list[str]:
        return list(self.default_weights.meta["categories"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_weights(self.default_weights)


_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str, *, weights: type[WeightsEnum], aliases: tuple[str, ...] = ()
) -> Callable[[Builder], Builder]:
    """Register ``fn(*, weights) -> nn.Module`` under ``name`` (and its aliases)."""

    def wrap(fn: Builder) -> Builder:
        for key in (name, *aliases):
            if key in _MODELS or key in _ALIASES:
                raise ValueError(f"model name {key!r} is already registered")
        _MODELS[name] = ModelSpec(name=name, aliases=aliases, weights_enum=weights, build=fn)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return wrap


def get_spec(name: str) -> ModelSpec:
    key = name.strip().lower().replace("-", "_").replace(".", "_")
    key = _ALIASES.get(key, key)
    try:
        return _MODELS[key]
    except KeyError:
        raise ModelNotFound(f"unknown model {name!r}; known models: {known_models()}") from None


def list_models() -> list[str]:
    return sorted(_MODELS)


def known_models() -> str:
    """The models and their aliases, as an error message lists them: "squeezenet1_0 (squeezenet), ..."."""
    return ", ".join(
        f"{name} ({', '.join(_MODELS[name].aliases)})" if _MODELS[name].aliases else name for name in list_models()
    )


# --- the seed models --------------------------------------------------------------


@register_model("squeezenet1_0", weights=tvm.SqueezeNet1_0_Weights, aliases=("squeezenet",))
def _squeezenet1_0(*, weights: WeightsEnum | None) -> nn.Module:
    return tvm.squeezenet1_0(weights=weights)


@register_model("squeezenet1_1", weights=tvm.SqueezeNet1_1_Weights)
def _squeezenet1_1(*, weights: WeightsEnum | None) -> nn.Module:
    return tvm.squeezenet1_1(weights=weights)


@register_model("vgg16", weights=tvm.VGG16_Weights)
def _vgg16(*, weights: WeightsEnum | None) -> nn.Module:
    return tvm.vgg16(weights=weights)


@register_model("resnet50", weights=tvm.ResNet50_Weights)
def _resnet50(*, weights: WeightsEnum | None) -> nn.Module:
    return tvm.resnet50(weights=weights)


@register_model("inception_v3", weights=tvm.Inception_V3_Weights, aliases=("inception", "inceptionv3"))
def _inception_v3(*, weights: WeightsEnum | None) -> nn.Module:
    # Built with the auxiliary classifier so ImageNet checkpoints (which carry its
    # weights) load strictly; it only runs in training, so serving drops it.
    # transform_input=True is torchvision's setting for its ImageNet weights.
    model = tvm.inception_v3(weights=weights, aux_logits=True, transform_input=True, init_weights=weights is None)
    return model


def strip_training_heads(model: nn.Module) -> nn.Module:
    """Remove parts that only run in training (Inception v3's aux logits)."""
    if isinstance(model, tvm.Inception3):
        model.aux_logits = False
        model.AuxLogits = None
    return model
