"""Fake quantization on an fp32 copy of a model: int8's roundings without an int8 build.

A layer "in int8" has its weights rounded to per-channel int8 and its input rounded to the
uint8 grid its calibrated observer chose, exactly the two roundings the int8 kernel applies
(BatchNorm folded into its convolution first, as the int8 flows do). One calibration pass gives
every layer's input range; each measurement is then one fp32 forward pass over the frames, no
rebuild. :class:`FakeQuantizer` rounds layer inputs; :class:`GraphFakeQuantizer` rounds exactly
the tensors the FX int8 graph rounds, residual adds included. Also here: which layers and
residual blocks a model has to put back in fp32 (:func:`fallback_units`). Used by the per-layer
ranking (:mod:`edgeinfer.quant.sensitivity`) and the budget (:mod:`edgeinfer.quant.mixed`).
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from edgeinfer.quant.fidelity import logits

__all__ = [
    "FakeQuantizer",
    "GraphFakeQuantizer",
    "fallback_units",
    "inference_layers",
    "quantizable_layers",
    "residual_blocks",
]

_ADDS = (operator.add, operator.iadd, torch.add)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers an int8 flow quantizes (convolutions and linear), in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _traced(model: nn.Module) -> torch.fx.Graph | None:
    try:
        return torch.fx.symbolic_trace(copy.deepcopy(model).eval()).graph
    except Exception:  # untraceable control flow: per layer only, every registered layer
        return None


def inference_layers(model: nn.Module) -> list[str]:
    """:func:`quantizable_layers` that inference runs: a training-only head (Inception v3's aux
    classifier, when a model still has it) is registered but never called in eval mode, and has no
    int8 graph, sensitivity or fp32 fallback to speak of."""
    layers = quantizable_layers(model)
    graph = _traced(model)
    if graph is None:
        return layers
    called = {str(node.target) for node in graph.nodes if node.op == "call_module"}
    return [name for name in layers if name in called]


def residual_blocks(model: nn.Module) -> list[str]:
    """Modules whose forward adds two tensors (ResNet's blocks), innermost first found, in model order.

    Their add (and the ReLU after it) is quantized too: its output carries the residual stream, whose
    per-tensor range an int8 add has to cover. Keeping a layer in fp32 leaves that add int8; keeping
    the block in fp32 does not. A model that FX cannot trace has none here.
    """
    graph = _traced(model)
    if graph is None:
        return []
    blocks: list[str] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _ADDS:
            stack = node.meta.get("nn_module_stack") or {}
            scope = list(stack)[-1] if stack else ""
            if scope and scope not in blocks:
                blocks.append(scope)
    return blocks


def fallback_units(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """What the budget can put back in fp32, in model order, each with its conv/linear layers.

    A residual block (:func:`residual_blocks`) is one unit with its add; any other layer is a unit of
    its own. On a model without residual adds (SqueezeNet, VGG, Inception) the units are the layers.
    """
    blocks = residual_blocks(model)
    units: dict[str, list[str]] = {}
    for layer in inference_layers(model):
        block = next((b for b in blocks if layer.startswith(b + ".")), None)
        units.setdefault(block or layer, []).append(layer)
    return {name: tuple(layers) for name, layers in units.items()}


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return copy.deepcopy(model).eval()
    return fuse(copy.deepcopy(model).eval())  # keeps each convolution's qualified name


class FakeQuantizer:
    """An fp32 copy of ``model`` in which any set of layers can be made to round like int8."""

    def __init__(self, model: nn.Module, *, reduce_range: bool = True, observer: str = "histogram") -> None:
        from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

        self.model = _fold_batchnorm(model)
        self.layers = inference_layers(self.model)
        self.quant_max = 127 if reduce_range else 255  # fx on x86 keeps 7-bit activations (flows.py says why)
        kind = HistogramObserver if observer == "histogram" else MinMaxObserver
        modules = dict(self.model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        self._observers = {name: kind(reduce_range=reduce_range) for name in self.layers}
        self._weights = {name: self._fake_weight(m.weight.detach()) for name, m in self._modules.items()}
        self._inputs: dict[str, tuple[float, int]] = {}
        self._active: set[str] = set()
        self._calibrating = False
        for name, module in self._modules.items():
            module.register_forward_pre_hook(self._hook(name))

    @staticmethod
    def _fake_weight(w: torch.Tensor) -> torch.Tensor:
        from torch.ao.quantization.observer import default_per_channel_weight_observer

        obs = default_per_channel_weight_observer()
        obs(w)
        scale, zero = obs.calculate_qparams()
        return torch.fake_quantize_per_channel_affine(w, scale.float(), zero.int(), 0, -128, 127)

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            if self._calibrating:
                self._observers[name](args[0].detach())
                return None
            if name not in self._active:
                return None
            scale, zero = self._inputs[name]
            return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero, 0, self.quant_max),)

        return hook

    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        self._calibrating = True
        try:
            with torch.inference_mode():
                for batch in batches:
                    self.model(batch)
        finally:
            self._calibrating = False
        for name, obs in self._observers.items():
            scale, zero = obs.calculate_qparams()
            self._inputs[name] = (float(scale), int(zero))

    def _known(self, layers: Iterable[str]) -> set[str]:
        chosen = set(layers)
        unknown = chosen - set(self.layers)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}")
        return chosen

    @contextlib.contextmanager
    def int8(self, layers: Iterable[str]) -> Iterator[nn.Module]:
        """The model with ``layers`` rounding like int8 (the others stay fp32) for the ``with`` block."""
        chosen = self._known(layers)
        saved = {name: self._modules[name].weight.data for name in chosen}
        for name in chosen:
            self._modules[name].weight.data = self._weights[name]
        self._active = chosen
        try:
            yield self.model
        finally:
            self._active = set()
            for name, w in saved.items():
                self._modules[name].weight.data = w

    def logits(self, layers: Iterable[str], inputs: torch.Tensor) -> torch.Tensor:
        with self.int8(layers) as model:
            return logits(model, inputs, batch=16)


class _Rounding(nn.Module):
    """Stands in for one calibrated activation observer: rounds like its int8 tensor when on."""

    def __init__(self, observer: nn.Module) -> None:
        super().__init__()
        scale, zero = observer.calculate_qparams()  # type: ignore[operator]
        self.scale, self.zero = float(scale), int(zero)
        self.quant_min, self.quant_max = int(observer.quant_min), int(observer.quant_max)  # type: ignore[arg-type]
        self.on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, self.quant_min, self.quant_max)


class GraphFakeQuantizer(FakeQuantizer):
    """The FX flow's own prepared graph, each activation observer made a switchable rounding.

    :class:`FakeQuantizer` rounds only each layer's input; the int8 model also rounds every
    residual add's output, the shortcut's, and the model input, each with its own per-tensor
    range, and those are where wide ranges hurt (an add's output covers the whole residual
    stream). This rounds exactly the tensors the FX flow quantizes, with the ranges its observers
    chose on the same calibration frames. A layer set in int8 switches on its weights' per-channel
    rounding, the activations produced in its scope and those its layers read (the model input, a
    pool's output); a residual block (``units``) switches as one, its add included.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        reduce_range: bool = True,
        observer: str = "histogram",
        units: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.layers = inference_layers(model)
        self.units = units or {name: (name,) for name in self.layers}
        original = dict(model.named_modules())
        self._modules = {name: original[name] for name in self.layers}
        self._float = model
        self._engine = "x86" if reduce_range else "qnnpack"  # qnnpack's mapping: full 8-bit activations
        self._observer = observer
        self._calibrating = False
        self._active: set[str] = set()
        self._weights: dict[str, torch.Tensor] = {}
        self._weight_of: dict[str, nn.Parameter] = {}
        self._rounding: dict[str, _Rounding] = {}

    def _unit_of(self, scope: str) -> str | None:
        for unit, layers in self.units.items():
            if scope == unit or scope.startswith(unit + "."):
                return unit
            for layer in layers:
                if scope == layer or scope.startswith(layer + "."):
                    return unit
        return None

    def _scope(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack)[-1] if stack else ""

    def _consumer_units(self, node: torch.fx.Node) -> set[str]:
        """The units that read ``node``, looking through ops that belong to none (pools, cat, flatten)."""
        found: set[str] = set()
        todo, seen = list(node.users), set()
        while todo:
            user = todo.pop()
            if user in seen or user.op == "output":
                continue
            seen.add(user)
            unit = self._unit_of(self._scope(user))
            if unit is not None:
                found.add(unit)
            else:
                todo.extend(user.users)
        return found

    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        from torch.ao.quantization.quantize_fx import prepare_fx

        from edgeinfer.quant.flows import _qconfig_mapping, share_concat_observers
        from edgeinfer.server.artifacts import quiet_deprecations

        frames = list(batches)
        with quiet_deprecations():
            mapping = _qconfig_mapping(self._engine, self._observer)
            self.model = prepare_fx(copy.deepcopy(self._float).eval(), mapping, (frames[0][:1],))
            share_concat_observers(self.model)
        with torch.inference_mode():
            for batch in frames:
                self.model(batch)
        graph = self.model.graph
        self._owners: dict[str, tuple[str | None, list[str]]] = {}
        for node in graph.nodes:
            target = str(node.target)
            if node.op != "call_module" or not target.startswith("activation_post_process"):
                continue
            if target not in self._rounding:
                self._rounding[target] = _Rounding(getattr(self.model, target))
            observed = node.args[0]
            producer = self._unit_of(self._scope(observed)) if isinstance(observed, torch.fx.Node) else None
            consumers = sorted(self._consumer_units(node), key=str)
            self._owners[node.name] = (producer, consumers)
        for target, rounding in self._rounding.items():
            setattr(self.model, target, rounding)
        self._switch = [
            (self._rounding[str(n.target)], *self._owners[n.name])
            for n in graph.nodes
            if n.op == "call_module" and n.name in self._owners
        ]
        prepared = dict(self.model.named_modules())
        for name in self.layers:
            module = prepared.get(name)
            found = (m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)) if module else iter(())
            inner = next(found, None)
            if inner is not None:
                self._weight_of[name] = inner.weight
                self._weights[name] = self._fake_weight(inner.weight.detach())

    @contextlib.contextmanager
    def int8(self, layers: Iterable[str]) -> Iterator[nn.Module]:
        chosen = self._known(layers)
        int8_units = {u for u, members in self.units.items() if chosen & set(members)}
        for rounding, producer, consumers in self._switch:
            if producer in int8_units or any(c in int8_units for c in consumers):
                rounding.on = True  # shared (a concatenation's): rounded if any of its places is
        saved = {name: self._weight_of[name].data for name in chosen if name in self._weight_of}
        for name in saved:
            self._weight_of[name].data = self._weights[name]
        try:
            yield self.model
        finally:
            for rounding in self._rounding.values():
                rounding.on = False
            for name, w in saved.items():
                self._weight_of[name].data = w
