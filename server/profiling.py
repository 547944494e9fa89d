"""Choosing batch sizes: which ones a model is cheaper per frame at, measured at load.

Triton calls them preferred batch sizes. On a GPU every power of two up to the
maximum pays; on a few CPU cores some sizes are dearer per frame than single frames,
so a CPU model's sizes are timed before it serves (:func:`profile_batch_sizes`).
"""

from __future__ import annotations

import logging
from typing import Any

from edgeinfer.server.runtimes import Runtime

__all__ = ["BATCH_COST_MS", "batch_ladder", "profile_batch_sizes"]

log = logging.getLogger(__name__)


def batch_ladder(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch``: 1, 2, 4, 8 (or 1, 2, 4, 6)."""
    return tuple(sorted({1 << i for i in range(max_batch.bit_length())} | {max_batch}))


# What a batch costs the inference thread besides its forward pass and its frames' own
# answers: cutting it and the stall while the stream threads take their turn (traced with
# bench/serve_bench.py on a 2-core VM). A batch of N pays it once for N frames.
BATCH_COST_MS = 0.3


def profile_batch_sizes(
    runner: Runtime,
    crop_size: int,
    max_batch: int,
    *,
    budget_s: float = 3.0,
    batch_cost_ms: float = BATCH_COST_MS,
    min_gain: float = 0.05,
    log_as: str = "model",
) -> tuple[int, ...]:
    """Batch sizes ``min_gain`` cheaper per served frame than single frames, and no dearer than smaller sizes.

    A size whose forward pass alone is dearer per frame than a single frame's is never chosen.

    Times powers of two up to ``max_batch``: two warm-up passes per size (TorchScript
    specializes per shape), then 3-7 rounds that alternate between the sizes, so that
    a burst of noise on this shared machine hits every size alike; each size keeps
    its fastest pass. A served frame costs its share of the pass plus its share of
    ``batch_cost_ms``. On a few CPU cores a single frame already keeps every core
    busy: some int8 kernels are much slower per frame at batch 2-4 than at 1, and
    others cost a little less per frame at 4-8, where batching wins once served.
    ``min_gain`` keeps out a size that is only even within the machine's noise: it
    wins nothing, and every frame of a batch waits for the whole batch. On a GPU
    batching is almost free. Sizes whose passes would not fit in ``budget_s`` of
    start-up are not timed and not used.
    """
    budget_ms = budget_s * 1e3
    spent_ms = 0.0
    inputs: dict[int, Any] = {}
    pass_ms: dict[int, float] = {}  # one pass at each size, after warm-up
    for n in batch_ladder(max_batch):
        if inputs and spent_ms + 5 * n * pass_ms[1] > budget_ms:  # 2 warm-up + 3 timed passes
            break
        inputs[n] = _zeros(runner, n, crop_size)
        for _ in range(2):
            pass_ms[n] = runner.infer(inputs[n], 1).inference_ms
            spent_ms += pass_ms[n]
    round_ms = max(sum(pass_ms.values()), 1e-3)
    rounds = max(3, min(7, int((budget_ms - spent_ms) / round_ms)))
    per_frame = {n: float("inf") for n in inputs}
    for _ in range(rounds):
        for n, x in inputs.items():
            per_frame[n] = min(per_frame[n], runner.infer(x, 1).inference_ms / n)
    served = {n: ms + batch_cost_ms / n for n, ms in per_frame.items()}
    # The scheduler always cuts the largest allowed batch, so a larger size must also be
    # no dearer per frame than the sizes below it (fp32 SqueezeNet: 4 beats 1, 8 loses to 4).
    # And its forward pass must not be dearer per frame than single frames': the per-batch cost is
    # an estimate, and a batch as large as a client's window of frames in flight stalls that client
    # until the whole batch is answered (int8 SqueezeNet on 2 cores served fewer frames at 1 and 8
    # than at 1 alone: bench/results/frame_cost.md).
    chosen = [1]
    for n, ms in served.items():
        if n > 1 and ms <= (1 - min_gain) * served[1] and ms <= served[chosen[-1]] and per_frame[n] <= per_frame[1]:
            chosen.append(n)
    log.info(
        "%s: ms per frame by batch size %s (+%.1f ms per batch when served); batching at %s",
        log_as,
        ", ".join(f"{n}: {ms:.2f}" for n, ms in per_frame.items()),
        batch_cost_ms,
        chosen,
    )
    return tuple(chosen)


def _zeros(runner: Runtime, n: int, crop_size: int) -> Any:
    """A batch of zeros as the runtime takes it: numpy for ONNX Runtime, a torch tensor for torch."""
    if getattr(runner, "name", "torch") == "onnxruntime":
        import numpy as np

        return np.zeros((n, 3, crop_size, crop_size), np.float32)
    import torch  # the torch runtime: imported already

    return torch.zeros(n, 3, crop_size, crop_size, dtype=runner.dtype, device=runner.device)  # type: ignore[attr-defined]
