"""Which batch sizes a model is served at: timed at load, alternating sizes, counting what a batch shares."""

from __future__ import annotations

import torch

from edgeinfer.server.profiling import batch_ladder, profile_batch_sizes
from edgeinfer.server.runner import BatchOutput


def test_ladder() -> None:
    assert batch_ladder(8) == (1, 2, 4, 8) and batch_ladder(6) == (1, 2, 4, 6) and batch_ladder(1) == (1,)


class CostRunner:
    """inference_ms = cost per frame at that batch size x batch size."""

    dtype, device = torch.float32, torch.device("cpu")

    def __init__(self, per_frame: dict[int, float]) -> None:
        self.per_frame = per_frame

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        n = batch.shape[0]
        return BatchOutput(torch.ones(n, k), torch.zeros(n, k, dtype=torch.long), self.per_frame[n] * n)


class BurstyRunner(CostRunner):
    """CostRunner on a noisy machine: calls ``burst`` (1-based) cost ``factor`` times more."""

    def __init__(self, per_frame: dict[int, float], burst: range, factor: float = 2.0) -> None:
        super().__init__(per_frame)
        self.burst, self.factor, self.calls = burst, factor, []

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        self.calls.append(batch.shape[0])
        out = super().infer(batch, k)
        noisy = out.inference_ms * (self.factor if len(self.calls) in self.burst else 1.0)
        return BatchOutput(out.probabilities, out.indices, noisy)


def test_profile_alternates_sizes_so_a_noise_burst_cannot_pick_them() -> None:
    # Batch 4 is slower per frame. A burst over three timed passes in a row would have made
    # batch 1 look slow if its passes ran back to back; alternated, each size also gets quiet passes.
    runner = BurstyRunner({1: 4.0, 2: 5.0, 4: 4.5}, burst=range(7, 10))
    assert profile_batch_sizes(runner, 8, 4, budget_s=0.2) == (1,)
    assert runner.calls[:12] == [1, 1, 2, 2, 4, 4] + [1, 2, 4] * 2  # warm-ups, then rounds across sizes
    # Too slow to time within the budget: only batch 1 runs.
    assert profile_batch_sizes(CostRunner({1: 900.0, 2: 100.0}), 8, 8, budget_s=3.0) == (1,)


def test_profile_keeps_only_sizes_cheaper_per_served_frame() -> None:
    # int8 SqueezeNet on 2 cores: batch 2 and 4 are slower per frame than batch 1.
    runner = CostRunner({1: 4.0, 2: 14.0, 4: 9.0, 8: 3.0})
    assert profile_batch_sizes(runner, 8, 8) == (1, 8)  # type: ignore[arg-type]
    # Batch 2 is only even once its frames share the per-batch cost (4.2 + 0.15 vs 4.0 + 0.3).
    assert profile_batch_sizes(CostRunner({1: 4.0, 2: 4.2, 4: 3.5}), 8, 4) == (1, 4)  # type: ignore[arg-type]
    # fp32 SqueezeNet here: 2 and 4 are cheaper, 8 is cheaper than 1 but dearer than 4.
    assert profile_batch_sizes(CostRunner({1: 25.0, 2: 21.6, 4: 20.4, 8: 22.0}), 8, 8, budget_s=2.0) == (1, 2, 4)


def test_profile_counts_the_per_batch_cost_a_batch_shares() -> None:
    # int8 ResNet50 here: a little cheaper per frame at 4 and 8 (3%), not enough on the
    # forward pass alone; with the per-batch cost shared, 4 and 8 are worth it served.
    runner = CostRunner({1: 10.0, 2: 10.0, 4: 9.7, 8: 9.7})
    assert profile_batch_sizes(runner, 8, 8, batch_cost_ms=0.0) == (1,)  # type: ignore[arg-type]
    assert profile_batch_sizes(runner, 8, 8, batch_cost_ms=0.6) == (1, 4, 8)  # type: ignore[arg-type]
    # int8 SqueezeNet at 8: about even per frame, within noise: not batched.
    assert profile_batch_sizes(CostRunner({1: 4.33, 2: 9.1, 4: 6.1, 8: 4.55}), 8, 8) == (1,)  # type: ignore[arg-type]
    # A forward pass 1% dearer per frame at 8, which the per-batch cost alone would have made a 6% gain: not batched.
    runner = CostRunner({1: 3.54, 2: 5.7, 4: 4.36, 8: 3.58})
    assert profile_batch_sizes(runner, 8, 8, batch_cost_ms=0.3) == (1,)  # type: ignore[arg-type]
