"""The two post-training static quantization flows.

``fx``   torch.ao FX graph mode (prepare_fx / convert_fx), traced and frozen to a
         TorchScript archive that loads with ``torch.jit.load`` and no model code.
         Deprecated upstream since torch 2.10 but present and fast for CNNs.
``pt2e`` torchao's PT2E path (export -> prepare_pt2e -> convert_pt2e) with the
         X86 or Arm Inductor quantizer, compiled ahead of time by AOTInductor into
         a ``.pt2`` package (``torch._inductor.aoti_load_package``). Slow to build
         (tens of seconds to minutes), batch size fixed at 1.

Both fuse conv+bn(+relu), quantize weights per channel to int8 and activations
to uint8 with ranges observed on calibration frames.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer.server.artifacts import quiet_deprecations

__all__ = ["FLOWS", "OBSERVERS", "quantize_fx", "quantize_pt2e", "requantizing_concats", "share_concat_observers"]

FLOWS = ("fx", "pt2e")
ENGINES = ("x86", "qnnpack")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"this torch build has no {engine} quantized engine (it has {torch.backends.quantized.supported_engines})"
        )


OBSERVERS = ("histogram", "minmax")


def _qconfig_mapping(engine: str, observer: str = "histogram", fp32_layers: Iterable[str] = ()) -> object:
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        default_per_channel_weight_observer,
    )

    mapping = get_default_qconfig_mapping(engine)
    # Per-channel int8 weights on both engines (qnnpack's default is per-tensor).
    # x86 keeps 7-bit activations (reduce_range) so fbgemm's u8*s8 accumulation
    # cannot saturate on CPUs without VNNI.
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    activation = HistogramObserver if observer == "histogram" else MinMaxObserver
    qconfig = QConfig(
        activation=activation.with_args(reduce_range=engine == "x86"),
        weight=default_per_channel_weight_observer,
    )
    assert isinstance(mapping, QConfigMapping)
    mapping = mapping.set_global(qconfig)
    for name in fp32_layers:  # mixed precision: this module (and what fuses with it) stays fp32
        mapping = mapping.set_module_name(name, None)
    return mapping


def share_concat_observers(prepared: torch.fx.GraphModule) -> int:
    """Give every concatenation's inputs and output one observer; returns how many cats there are.

    quantized::cat requantizes each input whose scale differs from the output's (Inception's
    branches, each with its own range). With one observer per concatenation group, calibration
    sees all branches' ranges and convert gives them one scale and zero point: no requantize.
    Concatenations that feed one another (Inception's Mixed_7b/7c) join one group.
    """
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    def observer_of(node: torch.fx.Node) -> str | None:
        if node.op == "call_module" and str(node.target).startswith("activation_post_process"):
            return str(node.target)
        return None

    cats = 0
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target is not torch.cat:
            continue
        cats += 1
        names = [observer_of(arg) for arg in node.args[0]] + [observer_of(user) for user in node.users]
        # A max-pool branch (Inception's Mixed_6a/7a) keeps its input's scale: its input joins too.
        for arg in node.args[0]:
            before = arg.args[0] if arg.args and isinstance(arg.args[0], torch.fx.Node) else None
            if before is not None and _keeps_scale(prepared, before) and before.args:
                names.append(observer_of(before.args[0]))
        known = [n for n in names if n is not None]
        for other in known[1:]:
            parent[find(other)] = find(known[0])
    shared: dict[str, nn.Module] = {}
    for name in parent:
        root = find(name)
        shared.setdefault(root, getattr(prepared, root))
        setattr(prepared, name, shared[root])
    return cats


def _keeps_scale(module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module.get_submodule(str(node.target)), nn.MaxPool2d)
    return node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d)


def requantizing_concats(converted: torch.fx.GraphModule, example: torch.Tensor) -> tuple[int, int]:
    """(concatenations whose inputs' scales differ from their output's, all concatenations), run once."""
    counts = [0, 0]

    class _Watch(torch.fx.Interpreter):
        def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
            out = super().call_function(target, args, kwargs)
            if target is torch.cat and getattr(out, "is_quantized", False):
                counts[1] += 1
                scales = {(t.q_scale(), t.q_zero_point()) for t in args[0]}
                counts[0] += scales != {(out.q_scale(), out.q_zero_point())}
            return out

    with torch.inference_mode():
        _Watch(converted).run(example)
    return counts[0], counts[1]


def quantize_fx(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    *,
    engine: str,
    example: torch.Tensor,
    on_batch: Callable[[int], None] | None = None,
    observer: str = "histogram",
    fp32_layers: Iterable[str] = (),
    concat_stats: dict[str, int] | None = None,
) -> torch.jit.ScriptModule:
    """int8 TorchScript: fused, calibrated, converted, traced and frozen.

    fp32_layers: module names (conv / linear) kept in floating point: mixed precision, with a
    dequantize before and a quantize after each. concat_stats, when given, receives how many
    concatenations there are and how many still requantize (``requantizing_concats``).
    """
    check_engine(engine)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with quiet_deprecations():
        prepared = prepare_fx(model.eval(), _qconfig_mapping(engine, observer, fp32_layers), (example,))
        share_concat_observers(prepared)
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
                if on_batch:
                    on_batch(batch.shape[0])
        quantized = convert_fx(prepared)
        if concat_stats is not None:
            requantize, total = requantizing_concats(quantized, example)
            concat_stats.update(concatenations=total, requantizing=requantize)
        with torch.inference_mode(), warnings.catch_warnings():
            # The converted graph turns quantization scales into Python floats; they
            # are constants of the int8 model, which is what the tracer warns about.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(quantized, example)
            return torch.jit.freeze(traced.eval())


def quantize_pt2e(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    *,
    engine: str,
    example: torch.Tensor,
    package_path: Path,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """int8 AOTInductor package (batch size 1), via torchao's PT2E quantizers."""
    check_engine(engine)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise RuntimeError("the pt2e flow needs torchao (pip install 'edgeinfer[quant]'); or use --flow fx") from exc
    if engine == "x86":
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as q

        quantizer = q.X86InductorQuantizer().set_global(q.get_default_x86_inductor_quantization_config())
    else:
        from torchao.quantization.pt2e.quantizer import arm_inductor_quantizer as q

        quantizer = q.ArmInductorQuantizer().set_global(q.get_default_arm_inductor_quantization_config())

    example = example[:1]
    # strict=True: torchvision's ResNet reuses one ReLU module per block, which the
    # non-strict exporter cannot attribute to single call sites for annotation.
    exported = torch.export.export(model.eval(), (example,), strict=True).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            for i in range(batch.shape[0]):  # the exported graph is specialised to batch 1
                prepared(batch[i : i + 1])
            if on_batch:
                on_batch(batch.shape[0])
    converted = convert_pt2e(prepared)
    import torch._inductor.config as inductor_config

    package_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _inductor_freezing(inductor_config):
        program = torch.export.export(converted, (example,), strict=True)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(package_path))
    return Path(path)


@contextlib.contextmanager
def _inductor_freezing(config: object) -> Iterator[None]:
    # Freezing folds the int8 weights into constants so Inductor can pick its
    # oneDNN/ACL quantized kernels; without it the package runs dequantize+fp32.
    old = config.freezing  # type: ignore[attr-defined]
    config.freezing = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        config.freezing = old  # type: ignore[attr-defined]
