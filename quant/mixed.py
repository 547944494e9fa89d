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
from edgeinfer.quant.intervals import Loss, frames_needed, verdict
from edgeinfer.quant.sensitivity import FakeQuantizer, LayerSensitivity, chart, quantizable_layers, rank, table

__all__ = ["RANK_FRAMES", "MixedOutcome", "check_layers", "choose"]

# Frames the fake-quant ranking runs on: a subset, since each layer costs two forward passes.
RANK_FRAMES = 64
# How many of the top-ranked layers are re-measured under each new fp32 set.
RERANK_TOP = 4


def check_layers(model: nn.Module, names: list[str]) -> None:
    known = quantizable_layers(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--fp32-layers {','.join(unknown)}: not a conv/linear layer of the model (its layers: "
            f"{', '.join(known[:4])}, ... {known[-1]}; --sensitivity lists them all)"
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
) -> MixedOutcome:
    """Build the artifact's model: as asked (``fp32_layers``), or the budget's choice; rank layers if asked."""
    check_layers(model, fp32_layers)
    start = Plan(observers[0], tuple(fp32_layers))
    subset = judge.inputs[:RANK_FRAMES].float()
    ranked: dict[str, Any] = {}

    def ranking() -> tuple[FakeQuantizer, torch.Tensor, list[LayerSensitivity]]:
        # Calibrated and ranked once, on first need: a budget met by the first build never pays for it.
        if not ranked:
            fq = FakeQuantizer(model, reduce_range=reduce_range, observer=observers[0])
            fq.calibrate(calibration())
            ref = fq.logits([], subset)  # fp32 with BatchNorm folded, the int8 side's own preprocessing
            ranked.update(fq=fq, ref=ref, rows=rank(fq, subset, ref, alone=sensitivity))
        return ranked["fq"], ranked["ref"], ranked["rows"]

    rows: list[LayerSensitivity] = []
    if sensitivity:
        rows = ranking()[2]
        if chart_path is not None:
            chart(rows, chart_path, title)

    if max_loss is None:
        m = build(start)
        return MixedOutcome(m, start, judge.measure(m)[0], sensitivity=rows)

    def rerank(plan: Plan) -> list[str]:
        fq, ref, first = ranking()
        left = [r.layer for r in first if r.layer not in plan.fp32_layers]
        top = left[:RERANK_TOP]
        again = rank(fq, subset, ref, fp32_layers=plan.fp32_layers, candidates=top, alone=False)
        return [r.layer for r in again] + left[RERANK_TOP:]

    result = search(
        build,
        judge,
        max_loss=max_loss,
        rerank=rerank,
        layers=quantizable_layers(model),
        observers=observers,
        start=start,
        on_step=on_step,
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
