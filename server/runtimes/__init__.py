"""The runtime seam: the daemon names a runtime per model and hands it batches (Triton's backend API).

A runtime alone knows how its model file is loaded and run. The daemon sees one small
interface, :class:`Runtime`: ``infer`` a batch to top-k, ``warmup``, ``describe``; each
runtime's ``load`` lives in its own module:

- :mod:`edgeinfer.server.runtimes.torch`: torchvision fp32, CUDA fp16 (and its graphs), int8
  TorchScript / AOTInductor artifacts. The only way into torch: a daemon whose models are all
  ONNX never imports it (tests/server/test_torch_free.py).
- :mod:`edgeinfer.server.runtimes.onnx`: ONNX Runtime on the CPU, for ONNX artifacts (int8 QDQ or fp32).

This package imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["RUNTIMES", "BatchOutput", "NonFiniteScores", "Runtime", "stack_frames", "top_k"]

RUNTIMES = ("torch", "onnxruntime")


class NonFiniteScores(RuntimeError):
    """The model's scores came out NaN or infinite: its activations overflow its precision (fp16), or bad weights."""


@dataclass
class BatchOutput:
    probabilities: Any  # N x k, float32 on the CPU, descending (a numpy array or a torch tensor)
    indices: Any  # N x k class ids
    inference_ms: float


class Runtime(Protocol):
    """What the batcher and the loader need of a loaded model."""

    name: str  # "torch" or "onnxruntime", as GetModel and the KServe metadata say

    def infer(self, batch: Any, k: int) -> BatchOutput:
        """Top-k softmax scores of a batch (N x 3 x H x W, the preprocessor's arrays stacked)."""
        ...

    def warmup(self, crop_size: int, *, batch_sizes: tuple[int, ...] = (1,), iterations: int = 3) -> None:
        """Run seeded noise through each batch size; raise :class:`NonFiniteScores` if a score is not finite."""
        ...

    def describe(self) -> dict[str, str]:
        """The runtime, its version and settings, for GetModel and the daemon's log."""
        ...


def stack_frames(frames: Sequence[Any]) -> Any:
    """One batch from preprocessed frames: numpy arrays (ONNX path) or torch tensors (torch path)."""
    first = frames[0]
    if isinstance(first, np.ndarray):
        return np.stack(frames) if len(frames) > 1 else first[None]
    import torch  # the frames are torch tensors: the torch runtime has imported it already

    return torch.stack(list(frames)) if len(frames) > 1 else first[None]


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax, then the k best of each row, descending; ties keep the lower class id first (as torch.topk)."""
    z = logits.astype(np.float32, copy=False)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, indices, axis=1), indices
