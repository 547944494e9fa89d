"""The intervals behind every loss edgequant reports: Wilson, Newcombe's paired difference, frames needed."""

from __future__ import annotations

import math
import random

import pytest

from edgeinfer.quant.intervals import frames_needed, newcombe_paired, paired_loss, verdict, wilson


def test_wilson_matches_the_textbook_values() -> None:
    lo, hi = wilson(81, 263)  # Newcombe 1998 (independent-proportions paper), example (a): 0.2553 .. 0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson(0, 10)  # no events: 0 .. 0.2775
    assert lo == 0.0 and round(hi, 4) == 0.2775


def test_newcombe_paired_is_antisymmetric_and_tends_to_wald_for_many_frames() -> None:
    d, lo, hi = newcombe_paired(10, 15, 5, 20)
    assert round(d, 3) == 0.2 and lo < d < hi
    d2, lo2, hi2 = newcombe_paired(10, 5, 15, 20)  # swap who was right: the interval mirrors
    assert (round(d2, 9), round(lo2, 9), round(hi2, 9)) == (round(-d, 9), round(-hi, 9), round(-lo, 9))
    n, b, c = 20_000, 60, 30
    d, lo, hi = newcombe_paired(n - b - c - 1000, b, c, 1000)
    wald = 1.96 * math.sqrt((b + c) / n**2 - (b - c) ** 2 / n**3)
    assert d == pytest.approx((b - c) / n) and (hi - lo) / 2 == pytest.approx(wald, rel=0.05)


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    covered, runs, n = 0, 400, 300
    for _ in range(runs):  # fp32 right 90%, int8 flips 3% of its right answers and fixes 1% of its wrong
        ref = [rng.random() < 0.9 for _ in range(n)]
        approx = [(r and rng.random() > 0.03) or (not r and rng.random() < 0.01) for r in ref]
        loss = paired_loss(ref, approx, against="labels")
        true = 100 * (0.9 * 0.03 - 0.1 * 0.01)
        covered += loss.low <= true <= loss.high
    assert 0.92 <= covered / runs <= 0.99


def test_against_fp32_the_loss_is_the_disagreement_with_wilson() -> None:
    loss = paired_loss([True] * 500, [True] * 499 + [False], against="fp32")
    assert loss.points == pytest.approx(0.2) and loss.counts == (499, 1)
    assert loss.low == pytest.approx(100 * wilson(1, 500)[0]) and loss.high == pytest.approx(100 * wilson(1, 500)[1])


def test_verdict_never_says_meets_on_evidence_that_cannot_tell() -> None:
    few = paired_loss([True] * 8, [True] * 8, against="fp32")  # 0 of 8 changed: still up to 32 points
    assert verdict(few, 0.3) == "cannot tell"
    need = frames_needed(few, 0.3)
    assert need is not None and 1200 < need < 1400  # Wilson's upper bound at 0/n: 3.84/(n+3.84) <= 0.3%
    assert verdict(paired_loss([True] * need, [True] * need, against="fp32"), 0.3) == "meets"
    many = paired_loss([True] * 20_000, [True] * 19_800 + [False] * 200, against="fp32")  # 1.0 point
    assert verdict(many, 0.3) == "exceeds" and frames_needed(many, 0.3) == 20_000
    on_the_line = paired_loss([True] * 1000, [True] * 997 + [False] * 3, against="fp32")
    assert verdict(on_the_line, 0.3) == "cannot tell" and frames_needed(on_the_line, 0.3) is None


def test_labels_loss_counts_the_four_cells() -> None:
    ref = [True, True, False, False, True]
    approx = [True, False, True, False, True]
    loss = paired_loss(ref, approx, against="labels")
    assert loss.counts == (2, 1, 1, 1) and loss.points == 0.0
    with pytest.raises(ValueError, match="same frames"):
        paired_loss(ref, approx[:-1], against="labels")
