"""Mixed precision for any artifact format: fp32 layers asked for, the accuracy budget, the sensitivity.

Both artifact makers (:mod:`edgeinfer.quant.quantize` for TorchScript, :mod:`edgeinfer.quant.
onnx_export` for ONNX QDQ) hand this a ``build(plan)`` that returns the model as its runtime
will run it, and get back the model to save plus what to report: the loss of plain int8 and of
the chosen plan with their intervals, the verdict against the budget, the layers kept in fp32,
and each layer's sensitivity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeinfer.quant.accuracy import Judge
from edgeinfer.quant.budget import BudgetResult, Plan, Step, search
from edgeinfer.quant.fake_quant import FakeQuantizer, GraphFakeQuantizer, fallback_units, quantizable_layers
from edgeinfer.quant.intervals import Loss, frames_needed, verdict
from edgeinfer.quant.sensitivity import LayerSensitivity, chart, rank, table

__all__ = ["RANK_FRAMES", "MixedOutcome", "check_layers", "choose"]

# Frames the per-layer sensitivity report runs on: a subset, since each layer costs two forward passes.
RANK_FRAMES = 64
# Frames the budget ranks its fallback units on, and how many of the best-ranked units it re-measures
# under each new fp32 set (greedy forward selection: what reverting each one *adds* to those already
# reverted): (frames, units) for models without residual blocks, and with them. Measured on the
# clutter stand-in (bench/results/README.md): re-measuring only the top 4 or 8 on 64-128 frames
# chose 11-12 of 18 units; all of them first, then the best 16, on 128 frames chose 6 for a lower
# loss, since a block helps only once the blocks before it are fp32 too (the residual stream is
# rounded at each). Without blocks, the cheaper setting stays: on full-size SqueezeNet one pass
# over its 26 layers on 128 frames took 161 s on this host, a re-rank of 16 another 67 s.
BUDGET_RANK = {False: (64, 4), True: (128, 16)}


def check_layers(model: nn.Module, names: list[str]) -> None:
    known = quantizable_layers(model)
    blocks = [unit for unit, layers in fallback_units(model).items() if len(layers) > 1] if names else []
    unknown = [n for n in names if n not in known and n not in blocks]
    if unknown:
        also = f"; its residual blocks: {', '.join(blocks[:3])}, ..." if blocks else ""
        raise ValueError(
            f"--fp32-layers {','.join(unknown)}: not a conv/linear layer or residual block of the model (its layers: "
            f"{', '.join(known[:4])}, ... {known[-1]}{also}; --sensitivity lists them all)"
        )


@dataclass
class MixedOutcome:
    model: Any
    plan: Plan
    loss: Loss
    plain_loss: Loss | None = None  # everything int8, when the budget search ran
    plain_model: Any = None
    budget: BudgetResult | None = None
    sensitivity: list[LayerSensitivity] = field(default_factory=list)

    def lines(self, judge: Judge) -> list[str]:
        out: list[str] = []
        if self.budget is not None:
            out += self.budget.lines()
            b = self.budget.max_loss
            v = verdict(self.loss, b)
            if v == "meets":
                out.append(f"budget {b:.2f} points: meets (the whole 95% interval is within it)")
            elif v == "exceeds":
                out.append(f"budget {b:.2f} points: EXCEEDS (the whole 95% interval is above it)")
            else:
                need = frames_needed(self.loss, b)
                how = f"about {need:,} frames would, at these rates" if need else "no number of frames would"
                out.append(
                    f"budget {b:.2f} points: CANNOT TELL from {judge.frames} frames (the interval "
                    f"{self.loss.low:+.2f} .. {self.loss.high:+.2f} straddles it; {how})"
                )
        elif self.plan.fp32_layers:
            out.append(f"kept in fp32 (asked for): {', '.join(self.plan.fp32_layers)}")
        if self.sensitivity:
            out.append(table(self.sensitivity))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_layers": list(self.plan.fp32_layers),
            "observer": self.plan.observer,
            "loss": self.loss.to_dict(),
            "plain_int8_loss": self.plain_loss.to_dict() if self.plain_loss else None,
            "budget": self.budget.to_dict() if self.budget else None,
            "verdict": verdict(self.loss, self.budget.max_loss) if self.budget else None,
            "frames_needed": frames_needed(self.loss, self.budget.max_loss) if self.budget else None,
            "sensitivity": [r.to_dict() for r in self.sensitivity],
        }


def choose(
    model: nn.Module,
    build: Callable[[Plan], Any],
    judge: Judge,
    calibration: Callable[[], Any],
    *,
    fp32_layers: list[str],
    max_loss: float | None,
    sensitivity: bool,
    reduce_range: bool,
    observers: tuple[str, ...],
    chart_path: Path | None = None,
    title: str = "",
    on_step: Callable[[Step], None] | None = None,
    max_builds: int | None = None,
) -> MixedOutcome:
    """Build the artifact's model: as asked (``fp32_layers``), or the budget's choice; rank layers if asked."""
    check_layers(model, fp32_layers)
    start = Plan(observers[0], tuple(fp32_layers))
    # What the budget puts back in fp32: layers, and residual blocks whole (their add with them).
    units = fallback_units(model)
    rank_frames, rerank_top = BUDGET_RANK[any(len(layers) > 1 for layers in units.values())]
    subset = judge.inputs[: max(RANK_FRAMES, rank_frames)].float()
    ranked: dict[str, Any] = {}

    def ranking() -> tuple[FakeQuantizer, torch.Tensor, list[LayerSensitivity]]:
        # Calibrated and ranked once, on first need: a budget met by the first build never pays for it.
        if not ranked:
            fq = GraphFakeQuantizer(model, reduce_range=reduce_range, observer=observers[0], units=units)
            fq.calibrate(calibration())
            ref = fq.logits([], subset)  # fp32 with BatchNorm folded, the int8 side's own preprocessing
            report = rank(fq, subset[:RANK_FRAMES], ref[:RANK_FRAMES]) if sensitivity else []
            ranked.update(fq=fq, ref=ref, rows=report)
        return ranked["fq"], ranked["ref"], ranked["rows"]

    rows: list[LayerSensitivity] = []
    if sensitivity:
        rows = ranking()[2]
        if chart_path is not None:
            chart(rows, chart_path, title)

    if max_loss is None:
        m = build(start)
        return MixedOutcome(m, start, judge.measure(m)[0], sensitivity=rows)

    order: list[str] = []  # the last ranking, best first

    def rerank(plan: Plan) -> list[str]:
        fq, ref, _ = ranking()
        left = [name for name in order or units if name not in plan.fp32_layers]
        top = left[:rerank_top] if order else left  # the first time, every unit
        frames, fp32 = subset[:rank_frames], ref[:rank_frames]
        again = rank(fq, frames, fp32, fp32_layers=plan.fp32_layers, candidates=top, alone=False, units=units)
        order[:] = [r.layer for r in again] + left[rerank_top:]
        return list(order)

    result = search(
        build,
        judge,
        max_loss=max_loss,
        rerank=rerank,
        layers=list(units),
        observers=observers,
        start=start,
        on_step=on_step,
        max_builds=max_builds,
    )
    chosen = result.chosen
    return MixedOutcome(
        result.model,
        chosen.plan,
        chosen.loss,
        plain_loss=result.first.loss,
        plain_model=result.plain_model,
        budget=result,
        sensitivity=rows,
    )
