"""The accuracy budget (``edgequant --max-loss POINTS``): buy int8's loss back, cheapest remedy first.

As Intel Neural Compressor's accuracy-driven tuning and OpenVINO's AccuracyAwareQuantization do:
1. quantize everything and measure the loss on the judge's frames;
2. while it exceeds the budget, try the remedies that keep every layer in int8 (the other
   activation observer: min-max instead of histogram; weights are per-channel already);
3. then put the most sensitive unit back in fp32 (a layer; a residual block whole, its add with it:
   :func:`edgeinfer.quant.fake_quant.fallback_units`), rebuild, measure, re-rank the rest under
   the new set, and repeat until the loss is within the budget.
The budget holds when the measured loss is at most ``max_loss``; whether the frames can *show*
that (the interval) is the report's verdict, never this search's stopping rule, which would
otherwise revert everything on evidence too thin to tell.

The search knows nothing of the format: ``build(plan)`` returns a callable model (an FX
TorchScript module, an ONNX Runtime session), so the loss is measured through the runtime
that will serve the artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeinfer.quant.accuracy import Judge
from edgeinfer.quant.intervals import Loss

__all__ = ["BudgetResult", "Plan", "Step", "search"]

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Plan:
    observer: str = "histogram"
    fp32_layers: tuple[str, ...] = ()

    def with_fp32(self, layer: str) -> Plan:
        return Plan(self.observer, (*self.fp32_layers, layer))

    def describe(self) -> str:
        kept = f"{len(self.fp32_layers)} fp32 layer(s)" if self.fp32_layers else "all int8"
        return f"{self.observer} observer, {kept}"


@dataclass
class Step:
    plan: Plan
    loss: Loss
    why: str
    seconds: float
    model: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observer": self.plan.observer,
            "fp32_layers": list(self.plan.fp32_layers),
            "loss": self.loss.to_dict(),
            "why": self.why,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class BudgetResult:
    max_loss: float
    steps: list[Step] = field(default_factory=list)
    model: Any = None
    plain_model: Any = None  # the first build: what plain int8 (or the asked-for plan) gives
    met: bool = False

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def chosen(self) -> Step:
        """The plan that met the budget; when none did, the least loss seen (never a worse one)."""
        if self.met:
            return self.steps[-1]
        return min(self.steps, key=lambda s: s.loss.points)

    def to_dict(self) -> dict[str, Any]:
        return {"max_loss": self.max_loss, "met": self.met, "steps": [s.to_dict() for s in self.steps]}

    def lines(self) -> list[str]:
        out = [f"accuracy budget {self.max_loss:.2f} points: {len(self.steps)} build(s)"]
        for i, s in enumerate(self.steps):
            out.append(f"  {i + 1}. {s.why}: {s.loss.text()} ({s.seconds:.0f} s)")
        if self.chosen.plan.fp32_layers:
            out.append(f"  kept in fp32: {', '.join(self.chosen.plan.fp32_layers)}")
        return out


def search(
    build: Callable[[Plan], Model],
    judge: Judge,
    *,
    max_loss: float,
    rerank: Callable[[Plan], list[str]],
    layers: list[str],
    observers: tuple[str, ...] = ("histogram", "minmax"),
    start: Plan | None = None,
    on_step: Callable[[Step], None] | None = None,
    max_builds: int | None = None,
) -> BudgetResult:
    """Cheapest remedies first, then fp32 layers one at a time; see the module docstring.

    rerank(plan): the layers still in int8, most sensitive first, under ``plan``.
    max_builds: give up (``met`` False, the last plan kept) after this many builds.
    """
    result = BudgetResult(max_loss)
    cache: dict[Plan, tuple[Loss, Any]] = {}

    def measure(plan: Plan, why: str) -> Loss:
        started = time.perf_counter()
        if plan not in cache:  # re-evaluate only what changed
            model = build(plan)
            cache[plan] = (judge.measure(model)[0], model)
        loss, model = cache[plan]
        step = Step(plan, loss, why, time.perf_counter() - started, model)
        result.steps.append(step)
        result.model = model
        if on_step:
            on_step(step)
        return loss

    plan = start or Plan(observers[0])
    best_loss = measure(plan, "everything int8" if not plan.fp32_layers else "the fp32 layers asked for")
    best_plan = plan
    result.plain_model = result.model
    if best_loss.points <= max_loss:
        result.met = True
        return result
    for observer in observers:
        if observer == plan.observer:
            continue
        trial = Plan(observer, plan.fp32_layers)
        loss = measure(trial, f"{observer} activation observer")
        if loss.points < best_loss.points:
            best_loss, best_plan = loss, trial
        if loss.points <= max_loss:
            result.met = True
            return result
    plan = best_plan
    while len(plan.fp32_layers) < len(layers) and (max_builds is None or len(result.steps) < max_builds):
        ranked = [name for name in rerank(plan) if name not in plan.fp32_layers]
        if not ranked:
            break
        plan = plan.with_fp32(ranked[0])
        loss = measure(plan, f"{ranked[0]} back to fp32")
        if loss.points <= max_loss:
            result.met = True
            return result
    result.model = result.chosen.model
    return result
