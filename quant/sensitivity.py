"""Per-layer sensitivity: how far the logits move when only one layer is int8, or only it is fp32.

Measured with fake quantization on an fp32 copy of the model (BatchNorm folded into its
convolution first, as the int8 flows do): a layer "in int8" has its weights rounded to per-channel
int8 and its input rounded to the uint8 grid its calibrated observer chose, exactly the two
roundings the int8 kernel applies. One calibration pass gives every layer's input range; each
measurement is then one fp32 forward pass over the frames, no rebuild. This is the ranking that
PyTorch's Numeric Suite (per-layer SQNR) and OpenVINO's AccuracyAwareQuantization (revert the
worst layer first) use; the budget search (:mod:`edgeinfer.quant.budget`) then verifies each
choice on the real int8 artifact.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeinfer.quant.fidelity import logits, sqnr_db

__all__ = ["FakeQuantizer", "LayerSensitivity", "chart", "quantizable_layers", "rank", "table"]


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers an int8 flow quantizes (convolutions and linear), in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


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
        self.layers = quantizable_layers(self.model)
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

    @contextlib.contextmanager
    def int8(self, layers: Iterable[str]) -> Iterator[nn.Module]:
        """The model with ``layers`` rounding like int8 (the others stay fp32) for the ``with`` block."""
        chosen = set(layers)
        unknown = chosen - set(self.layers)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}")
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


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer: SQNR of the logits and top-1 changes (of ``frames``) against fp32 when only it is
    int8, and when every layer but it is (the gain from keeping it in fp32)."""

    layer: str
    kind: str
    only_int8_sqnr_db: float
    only_int8_flips: int
    only_fp32_sqnr_db: float
    only_fp32_flips: int
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k = "x".join(str(s) for s in module.kernel_size)
        return f"conv {k} {module.in_channels}->{module.out_channels}"
    assert isinstance(module, nn.Linear)
    return f"linear {module.in_features}->{module.out_features}"


def _flips(reference: torch.Tensor, approx: torch.Tensor) -> int:
    return int((reference.argmax(1) != approx.argmax(1)).sum())


def rank(
    fq: FakeQuantizer,
    inputs: torch.Tensor,
    reference: torch.Tensor,
    *,
    fp32_layers: Iterable[str] = (),
    candidates: Iterable[str] | None = None,
    alone: bool = True,
) -> list[LayerSensitivity]:
    """Int8 layers' sensitivity on ``inputs``, most sensitive first.

    Most sensitive: keeping it in fp32 gains the most SQNR over the rest in int8 (ties: fewest
    flips left), which is what reverting it would buy. ``fp32_layers`` are fp32 already and
    skipped; ``candidates`` limits which layers are measured (the budget re-ranks a few);
    ``alone=False`` skips the only-it-int8 pass (reported as NaN).
    """
    kept = set(fp32_layers)
    int8 = [name for name in fq.layers if name not in kept]
    chosen = [name for name in int8 if candidates is None or name in set(candidates)]
    rows = []
    for name in chosen:
        only = fq.logits([name], inputs) if alone else None
        without = fq.logits([n for n in int8 if n != name], inputs)
        rows.append(
            LayerSensitivity(
                name,
                _kind(fq._modules[name]),
                sqnr_db(reference, only) if only is not None else float("nan"),
                _flips(reference, only) if only is not None else -1,
                sqnr_db(reference, without),
                _flips(reference, without),
                len(inputs),
            )
        )
    return sorted(rows, key=lambda r: (-r.only_fp32_sqnr_db, r.only_fp32_flips))


def table(rows: list[LayerSensitivity], limit: int = 12) -> str:
    if not rows:
        return "per-layer sensitivity: no int8 layers"
    frames = rows[0].frames
    lines = [
        f"per-layer sensitivity on {frames} frames, most sensitive first (SQNR of the logits vs fp32; "
        "flips: frames whose top-1 changed)",
        f"  {'layer':<28} {'kind':<24} {'only it int8':>18} {'all but it int8':>18}",
    ]
    for r in rows[:limit]:
        lines.append(
            f"  {r.layer:<28} {r.kind:<24} {r.only_int8_sqnr_db:>7.1f} dB {r.only_int8_flips:>3} fl"
            f" {r.only_fp32_sqnr_db:>8.1f} dB {r.only_fp32_flips:>3} fl"
        )
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more in the sidecar and the chart")
    return "\n".join(lines)


def chart(rows: list[LayerSensitivity], path: Path, title: str) -> Path:
    """A horizontal bar chart, most sensitive layer at the top: SQNR when only that layer is int8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(rows) + 1.2)))
    names = [r.layer for r in rows][::-1]
    ax.barh(names, [r.only_int8_sqnr_db for r in rows][::-1], color="#c44e52", label="only this layer int8")
    ax.barh(names, [r.only_fp32_sqnr_db for r in rows][::-1], color="#4c72b0", alpha=0.5, label="all but it int8")
    ax.set_xlabel("logit SQNR vs fp32 (dB, lower = more quantization noise)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
