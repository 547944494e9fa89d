"""95% intervals for the losses edgequant reports, and how many frames would resolve a budget.

A loss is always measured on the same frames in fp32 and int8, so the right interval is the
paired one: Newcombe's method 10 for a difference of paired proportions (Newcombe 1998,
Stat. Med. 17:2635, "Improved confidence intervals for the difference between binomial
proportions based on paired data"), built from two Wilson score intervals. A paired interval
is much narrower than two independent ones: only the frames where fp32 and int8 disagree
carry information about the difference. Without labels the loss is measured against fp32's
own answers (the share of frames whose top-1 changed), a single proportion: Wilson.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Loss", "frames_needed", "newcombe_paired", "paired_loss", "verdict", "wilson"]

Z95 = 1.959963984540054


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (k and n may be scaled, fractional counts)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(both: float, only_first: float, only_second: float, neither: float) -> tuple[float, float, float]:
    """(difference, low, high) of p1 - p2 for paired proportions (Newcombe's method 10).

    both: frames right in both; only_first: right in the first only (fp32 right, int8 wrong);
    only_second: right in the second only; neither: wrong in both.
    """
    n = both + only_first + only_second + neither
    if n <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson(both + only_first, n)
    l2, u2 = wilson(both + only_second, n)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, max(-1.0, diff - lower), min(1.0, diff + upper)


@dataclass(frozen=True)
class Loss:
    """Top-1 points lost by int8 on ``frames`` frames, with its 95% interval.

    against: "labels" (accuracy fp32 - int8, Newcombe's paired interval) or "fp32" (the share of
    frames whose top-1 changed, Wilson: a bound on the accuracy loss, which it can only overstate).
    counts: (both, only fp32, only int8, neither) right for labels; (agree, disagree) for fp32.
    """

    points: float
    low: float
    high: float
    frames: int
    against: str
    counts: tuple[int, ...]

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self) -> str:
        return f"{self.points:+.2f} points (95% {self.low:+.2f} .. {self.high:+.2f}, {self.frames} frames)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "low": self.low,
            "high": self.high,
            "frames": self.frames,
            "against": self.against,
            "counts": list(self.counts),
        }


def paired_loss(reference_right: list[bool], approx_right: list[bool], *, against: str) -> Loss:
    """The loss of ``approx`` against ``reference`` on the same frames, in points, with its interval."""
    if len(reference_right) != len(approx_right):
        raise ValueError("paired outcomes must cover the same frames")
    n = len(reference_right)
    if against == "fp32":
        disagree = sum(not a for a in approx_right)
        lo, hi = wilson(disagree, n)
        return Loss(100 * disagree / max(1, n), 100 * lo, 100 * hi, n, against, (n - disagree, disagree))
    pairs = list(zip(reference_right, approx_right, strict=True))
    counts = (
        sum(r and a for r, a in pairs),
        sum(r and not a for r, a in pairs),
        sum(a and not r for r, a in pairs),
        sum(not r and not a for r, a in pairs),
    )
    diff, lo, hi = newcombe_paired(*counts)
    return Loss(100 * diff, 100 * lo, 100 * hi, n, against, counts)


def _scaled(loss: Loss, n: int) -> Loss:
    scale = n / max(1, loss.frames)
    counts = tuple(c * scale for c in loss.counts)
    if loss.against == "fp32":
        lo, hi = wilson(counts[1], n)
    else:
        _, lo, hi = newcombe_paired(*counts)
    return Loss(loss.points, 100 * lo, 100 * hi, n, loss.against, loss.counts)


def verdict(loss: Loss, budget: float) -> str:
    """'meets' only when the whole interval is within the budget, 'exceeds' when it is all above."""
    if loss.high <= budget:
        return "meets"
    if loss.low > budget:
        return "exceeds"
    return "cannot tell"


def frames_needed(loss: Loss, budget: float, *, limit: int = 10_000_000) -> int | None:
    """Frames that would put the whole interval on one side of ``budget`` if the observed rates held.

    None when no number of frames would (the estimate sits on the budget itself).
    """
    if verdict(loss, budget) != "cannot tell":
        return loss.frames
    if verdict(_scaled(loss, limit), budget) == "cannot tell":
        return None
    lo, hi = max(1, loss.frames), limit
    while lo < hi:
        mid = (lo + hi) // 2
        if verdict(_scaled(loss, mid), budget) == "cannot tell":
            lo = mid + 1
        else:
            hi = mid
    return lo
