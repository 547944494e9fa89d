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

import torch
from torch import nn

from edgeinfer.server.artifacts import quiet_deprecations

__all__ = ["FLOWS", "quantize_fx", "quantize_pt2e"]

FLOWS = ("fx", "pt2e")
ENGINES = ("x86", "qnnpack")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"this torch build has no {engine} quantized engine (it has {torch.backends.quantized.supported_engines})"
        )


def _qconfig_mapping(engine: str) -> object:
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer

    mapping = get_default_qconfig_mapping(engine)
    # Per-channel int8 weights on both engines (qnnpack's default is per-tensor).
    # x86 keeps 7-bit activations (reduce_range) so fbgemm's u8*s8 accumulation
    # cannot saturate on CPUs without VNNI.
    qconfig = QConfig(
        activation=HistogramObserver.with_args(reduce_range=engine == "x86"),
        weight=default_per_channel_weight_observer,
    )
    assert isinstance(mapping, QConfigMapping)
    return mapping.set_global(qconfig)


def quantize_fx(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    *,
    engine: str,
    example: torch.Tensor,
    on_batch: Callable[[int], None] | None = None,
) -> torch.jit.ScriptModule:
    """int8 TorchScript: fused, calibrated, converted, traced and frozen."""
    check_engine(engine)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with quiet_deprecations():
        prepared = prepare_fx(model.eval(), _qconfig_mapping(engine), (example,))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
                if on_batch:
                    on_batch(batch.shape[0])
        quantized = convert_fx(prepared)
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
