"""Per-layer sensitivity: how far the logits move when only one layer is int8, or only it is fp32.

Measured with fake quantization (:mod:`edgeinfer.quant.fake_quant`): each measurement is one
fp32 forward pass over the frames, no rebuild. This is the ranking that PyTorch's Numeric Suite
(per-layer SQNR) and OpenVINO's AccuracyAwareQuantization (revert the worst layer first) use;
the budget search (:mod:`edgeinfer.quant.budget`) then verifies each choice on the real int8
artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeinfer.quant.fake_quant import FakeQuantizer
from edgeinfer.quant.fidelity import sqnr_db

__all__ = ["LayerSensitivity", "chart", "rank", "table"]


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
    units: dict[str, tuple[str, ...]] | None = None,
) -> list[LayerSensitivity]:
    """Int8 layers' (or ``units``': see :func:`fallback_units`) sensitivity on ``inputs``, most sensitive first.

    Most sensitive: keeping it in fp32 gains the most SQNR over the rest in int8 (ties: fewest
    flips left), which is what reverting it would buy. ``fp32_layers`` (layers or units) are fp32
    already and skipped; ``candidates`` limits which are measured (the budget re-ranks a few);
    ``alone=False`` skips the only-it-int8 pass (reported as NaN).
    """
    units = units or {name: (name,) for name in fq.layers}
    kept = set(fp32_layers)
    kept_layers = {layer for name in kept for layer in units.get(name, (name,))}
    left = [name for name in units if name not in kept]
    int8 = [layer for name in left for layer in units[name] if layer not in kept_layers]
    wanted = None if candidates is None else set(candidates)
    rows = []
    for name in left:
        if wanted is not None and name not in wanted:
            continue
        mine = set(units[name])
        only = fq.logits([la for la in units[name] if la not in kept_layers], inputs) if alone else None
        without = fq.logits([la for la in int8 if la not in mine], inputs)
        kind = _kind(fq._modules[name]) if units[name] == (name,) else f"block: {len(mine)} layers, its add"
        rows.append(
            LayerSensitivity(
                name,
                kind,
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
