"""Runs a batch of preprocessed frames through one model and returns top-k.

The runner is the only place that calls the model. fp32 on the CPU, fp16 with
channels_last on CUDA (cuDNN's fast layout for convolutions), or an int8
TorchScript artifact on the CPU: all look the same from outside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BatchOutput", "ModelRunner"]


@dataclass
class BatchOutput:
    probabilities: torch.Tensor  # N x k, float32, CPU, descending
    indices: torch.Tensor  # N x k, int64, CPU
    inference_ms: float


class ModelRunner:
    def __init__(
        self,
        module: nn.Module | torch.jit.ScriptModule,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        """``batch`` is N x 3 x H x W in the runner's dtype, on its device."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits = self.module(batch)
            probs = torch.softmax(logits.float(), dim=1)
            values, indices = probs.topk(k, dim=1)
            # .cpu() also waits for the GPU, so the time below is the real one.
            values, indices = values.cpu(), indices.cpu()
        return BatchOutput(values, indices, (time.perf_counter() - t0) * 1e3)

    def warmup(self, crop_size: int, *, batch_sizes: tuple[int, ...] = (1,), iterations: int = 3) -> None:
        """First calls are slow (allocations, cuDNN autotuning; TorchScript optimises after 2 profiling runs)."""
        for n in batch_sizes:
            x = torch.zeros(n, 3, crop_size, crop_size, dtype=self.dtype, device=self.device)
            for _ in range(iterations):
                self.infer(x, 1)
