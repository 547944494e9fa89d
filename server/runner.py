"""Runs a batch of preprocessed frames through one model and returns top-k.

The runner is the only place that calls the model. fp32 on the CPU, fp16 with
channels_last on CUDA (cuDNN's fast layout for convolutions), or an int8
TorchScript artifact on the CPU: all look the same from outside.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from edgeinfer.server.runtimes import BatchOutput, NonFiniteScores

__all__ = ["BatchOutput", "ModelRunner", "NonFiniteScores"]


class ModelRunner:
    """The torch runtime's model: an ``nn.Module`` or TorchScript/AOTInductor module on one device."""

    name = "torch"

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
        # batch size -> (graph, its input buffer, its scores buffer); see capture_graphs()
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "version": torch.__version__, "threads": str(torch.get_num_threads())}

    @property
    def graph_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        """``batch`` is N x 3 x H x W in the runner's dtype, on its device."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            graph = self._graphs.get(batch.shape[0])
            if graph is not None:
                g, static_input, static_probs = graph
                static_input.copy_(batch)  # into the captured buffer (and its memory format)
                g.replay()
                probs = static_probs
            else:
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                probs = self._scores(batch)
            values, indices = probs.topk(k, dim=1)
            # .cpu() also waits for the GPU, so the time below is the real one (and the
            # graph's scores buffer is read before the next replay overwrites it).
            values, indices = values.cpu(), indices.cpu()
        return BatchOutput(values, indices, (time.perf_counter() - t0) * 1e3)

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(batch).float(), dim=1)

    def capture_graphs(self, crop_size: int, batch_sizes: tuple[int, ...]) -> None:
        """CUDA: record the forward pass once per batch size as a CUDA graph; ``infer`` replays it.

        An eager forward pass launches each kernel from Python (ResNet50: ~160 of them),
        and on a fast GPU the launches take longer than the GPU work; a replay is one
        launch (figures: bench/results/README.md, "On a GPU"). The graphs share one memory
        pool (they never run at once: one inference thread), captured largest first. Call
        it on the thread that will replay them, after ``warmup`` (cuDNN has picked its
        kernels by then).
        """
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        pool = None
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for n in sorted(set(batch_sizes), reverse=True):
            with torch.inference_mode():
                static_input = torch.zeros(n, 3, crop_size, crop_size, dtype=self.dtype, device=self.device)
                static_input = static_input.contiguous(memory_format=memory_format)
                side = torch.cuda.Stream(self.device)  # capture wants its warm-up off the current stream
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._scores(static_input)
                torch.cuda.current_stream(self.device).wait_stream(side)
                g = torch.cuda.CUDAGraph()
                # thread_local: stream threads may decode on their own streams meanwhile.
                with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
                    static_probs = self._scores(static_input)
            pool = g.pool()
            self._graphs[n] = (g, static_input, static_probs)

    def warmup(self, crop_size: int, *, batch_sizes: tuple[int, ...] = (1,), iterations: int = 3) -> None:
        """First calls are slow (allocations, cuDNN autotuning; TorchScript optimises after 2 profiling runs).

        The input is seeded noise, shaped like a normalized image, and its scores must be
        finite: a model that overflows its precision (fp16's largest value is 65504) is
        refused at load with :class:`NonFiniteScores` instead of answering every frame
        with a meaningless class.
        """
        generator = torch.Generator().manual_seed(0)
        for n in batch_sizes:
            x = torch.randn(n, 3, crop_size, crop_size, generator=generator).to(self.device, self.dtype)
            for _ in range(iterations):
                out = self.infer(x, 1)
            if not torch.isfinite(out.probabilities).all():
                raise NonFiniteScores(f"NaN or infinite scores for a batch of {n} random frames")
