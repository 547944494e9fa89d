"""A PT2E quantizer for ONNX Runtime: the QDQ layout its CPU kernels fuse.

XNNPACK's recipe, written out here because torchao 0.18 ships only the Inductor
quantizers (executorch owns XNNPACK's): per-channel symmetric int8 weights
(-127..127), per-tensor **uint8** activations from a histogram observer. ORT's
QDQ fusion then turns DQ -> Conv -> (Relu ->) Q into QLinearConv, Add into
QLinearAdd, Concat into QLinearConcat, MatMul/Gemm into QGemm, and lets MaxPool
and Flatten run on the uint8 tensor (same scale in and out). The issue's survey
(issue 27) measured the alternatives: signed int8 activations leave most convs in
fp32 on ORT x86 (4-13x slower), and X86InductorQuantizer leaves conv -> add outputs
unquantized (ResNet50 1.9x slower in ORT).

Layers can stay fp32 (``fp32_layers``, or ``set_module_name(name, None)`` as the
upstream quantizers spell it): their nodes get no annotation, so no QDQ pair, and
ORT runs them in float. The accuracy budget (``--max-loss``) uses that.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import HistogramObserver, PerChannelMinMaxObserver
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

__all__ = ["ACTIVATION", "WEIGHT", "BoardQuantizer", "quantizable_layers"]

ACTIVATION = QuantizationSpec(
    dtype=torch.uint8,
    quant_min=0,
    quant_max=255,
    qscheme=torch.per_tensor_affine,
    observer_or_fake_quant_ctr=HistogramObserver.with_args(eps=2**-12),
)
WEIGHT = QuantizationSpec(
    dtype=torch.int8,
    quant_min=-127,
    quant_max=127,
    qscheme=torch.per_channel_symmetric,
    ch_axis=0,
    observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12),
)

_aten = torch.ops.aten
_WEIGHTED = {_aten.conv2d.default, _aten.linear.default}
_RELU = {_aten.relu.default, _aten.relu_.default}
_ADD = {_aten.add.Tensor, _aten.add_.Tensor}
_CAT = {_aten.cat.default, _aten.concat.default}
# Same scale in and out: ORT runs these on the uint8 tensor between two QDQ pairs.
_PASS_THROUGH = {
    _aten.max_pool2d.default,
    _aten.flatten.using_ints,
    _aten.view.default,
    _aten.reshape.default,
}
_POOL = {_aten.adaptive_avg_pool2d.default, _aten.avg_pool2d.default, _aten.mean.dim}
_KEY = "quantization_annotation"


def quantizable_layers(model: nn.Module) -> list[str]:
    """The names of the layers the quantizer gives int8 weights (convolutions and linear layers), in order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _module_paths(node: Node) -> list[str]:
    paths = []
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        paths.append(path[len("L['self'].") :] if path.startswith("L['self'].") else path)
    return paths


class BoardQuantizer(Quantizer):
    """Annotates an exported graph for ORT's QDQ fusion; ``fp32_layers`` (module names) stay float."""

    def __init__(self, fp32_layers: Iterable[str] = ()) -> None:
        super().__init__()
        self.fp32_layers: set[str] = set(fp32_layers)

    def set_module_name(self, name: str, config: object | None) -> BoardQuantizer:
        """``config=None`` keeps module ``name`` (and everything inside it) in fp32, as upstream quantizers do."""
        if config is not None:
            raise ValueError("BoardQuantizer has one configuration; pass None to keep a module in fp32")
        self.fp32_layers.add(name)
        return self

    def _kept_fp32(self, node: Node) -> bool:
        return any(
            path == name or path.startswith(name + ".") for path in _module_paths(node) for name in self.fp32_layers
        )

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or _KEY in node.meta or self._kept_fp32(node):
                continue
            target = node.target
            if target in _WEIGHTED:
                self._weighted(node)
            elif target in _ADD and all(isinstance(a, Node) for a in node.args[:2]):
                _annotate(node, {a: ACTIVATION for a in node.args[:2]}, None)
                self._output(node)
            elif target in _CAT:
                self._concatenation(node)
            elif target in _POOL:
                _annotate(node, {node.args[0]: ACTIVATION}, ACTIVATION)
            elif target in _PASS_THROUGH and isinstance(node.args[0], Node) and _is_quantized(node.args[0]):
                source = node.args[0]
                _annotate(node, {source: ACTIVATION}, SharedQuantizationSpec((source, node)))
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check: every annotation above is one ORT fuses."""

    def _weighted(self, node: Node) -> None:
        x, weight = node.args[0], node.args[1]
        inputs = {x: ACTIVATION, weight: WEIGHT}
        # A bias stays float: ORT quantizes it to int32 itself when it fuses the QDQ group.
        _annotate(node, inputs, None)
        self._output(node)

    def _concatenation(self, node: Node) -> None:
        """Inputs and output on one scale (XNNPACK's cat annotation): ORT's QLinearConcat then copies bytes.

        With each branch on its own scale it requantizes every input through a lookup table, 12% of
        SqueezeNet's time in ORT (8 fire modules); the torch flow shares them too
        (flows.share_concat_observers). Concatenations feeding one another join one group.
        """
        tensors = list(dict.fromkeys(a for a in node.args[0] if isinstance(a, Node)))
        shared = SharedQuantizationSpec((tensors[0], node))
        _annotate(node, {tensors[0]: ACTIVATION, **dict.fromkeys(tensors[1:], shared)}, shared)

    def _output(self, node: Node) -> None:
        """Quantize after a following ReLU when there is one (ORT folds the ReLU into the Q), else right here."""
        users = list(node.users)
        if len(users) == 1 and users[0].target in _RELU and not self._kept_fp32(users[0]):
            _annotate(users[0], {}, ACTIVATION)
        else:
            annotation = node.meta[_KEY]
            annotation.output_qspec = ACTIVATION


def _annotate(node: Node, inputs: dict[Node, QuantizationSpec], output: object | None) -> None:
    node.meta[_KEY] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=output, _annotated=True)


def _is_quantized(node: Node) -> bool:
    annotation = node.meta.get(_KEY)
    if annotation is not None and annotation.output_qspec is not None:
        return True
    # getitem of a quantized max_pool2d_with_indices, etc.: follow one step back
    return node.target is operator.getitem and isinstance(node.args[0], Node) and _is_quantized(node.args[0])
