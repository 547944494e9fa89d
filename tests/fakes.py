"""A stand-in runner with a fixed delay, to test batching and drop policies exactly."""

from __future__ import annotations

import threading
import time

import torch

from edgeinfer.server.batcher import BatchScheduler
from edgeinfer.server.loading import ServedModel
from edgeinfer.server.options import PreprocessOn
from edgeinfer.server.preprocess import Preprocessor
from edgeinfer.server.registry import get_spec
from edgeinfer.server.runner import BatchOutput


class SlowRunner:
    """Answers class i = round(mean pixel * 10) % 1000 after ``delay_s``; records batch sizes."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        self.gate.wait()
        self.batch_sizes.append(batch.shape[0])
        time.sleep(self.delay_s)
        top = (batch.float().mean(dim=(1, 2, 3)) * 10).round().long() % 1000
        indices = torch.stack([(top + j) % 1000 for j in range(k)], dim=1)
        probs = torch.linspace(0.5, 0.1, k).expand(batch.shape[0], k).clone()
        return BatchOutput(probs, indices, self.delay_s * 1e3)


def wait_until_taken(scheduler: BatchScheduler, timeout: float = 5.0) -> None:
    """Wait until the inference thread has taken every queued job (and, gate closed, waits in infer)."""
    deadline = time.monotonic() + timeout
    while scheduler.pending():
        assert time.monotonic() < deadline, "the inference thread never took the job"
        time.sleep(0.001)


def fake_model(
    runner: SlowRunner, *, max_batch: int = 1, preprocess_on: PreprocessOn = PreprocessOn.STREAM
) -> ServedModel:
    spec = get_spec("squeezenet")
    pre = spec.preprocessing
    return ServedModel(
        name=spec.name,
        aliases=spec.aliases,
        architecture="fake",
        precision="fp32",
        device=runner.device,
        weights="fake",
        categories=spec.categories,
        preprocessing=pre,
        preprocessor=Preprocessor(pre, device=runner.device),
        scheduler=BatchScheduler(runner, max_batch=max_batch, name="fake"),  # type: ignore[arg-type]
        preprocess_on=preprocess_on,
    )
