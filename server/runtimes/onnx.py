"""ONNX Runtime on the CPU: one InferenceSession per model, its SessionOptions set once.

Loads an ONNX artifact (int8 QDQ from ``edgequant --format onnx``, or fp32 from
``--format onnx-fp32``) from the bytes whose SHA-256 was just checked
(:func:`edgeinfer.server.artifacts.read_model_file`), so the file cannot change between
the check and the load. ORT fuses the QDQ pairs into QLinearConv / QLinearAdd /
QLinearConcat / QGemm at session creation (``optimized_model_filepath`` shows the graph
it runs; tests/quant/test_onnx_export.py checks it). No torch anywhere on this path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.server.runtimes import BatchOutput, NonFiniteScores, top_k

__all__ = ["OnnxRuntime", "ort_available", "session_options"]


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def session_options(threads: int, *, optimized_model_filepath: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One OpenMP-like team per session, as the torch runtime's intra-op threads; batches run
    # one at a time on the daemon's inference thread, so no inter-op parallelism to exploit.
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are about the serialized graph, not ours
    if optimized_model_filepath is not None:
        options.optimized_model_filepath = str(optimized_model_filepath)
    return options


class OnnxRuntime:
    """A model in an ONNX Runtime CPU session. ``model``: the file's bytes (or its path)."""

    name = "onnxruntime"
    device = "cpu"
    dtype = "float32"

    def __init__(self, model: bytes | Path, *, threads: int = 1, optimized_model_filepath: Path | None = None) -> None:
        import onnxruntime as ort

        self.threads = max(1, threads)
        source = model if isinstance(model, bytes) else str(model)
        options = session_options(self.threads, optimized_model_filepath=optimized_model_filepath)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def logits(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[0])

    def infer(self, batch: np.ndarray, k: int) -> BatchOutput:
        t0 = time.perf_counter()
        probabilities, indices = top_k(self.logits(batch), k)
        return BatchOutput(probabilities, indices, (time.perf_counter() - t0) * 1e3)

    def warmup(self, crop_size: int, *, batch_sizes: tuple[int, ...] = (1,), iterations: int = 3) -> None:
        rng = np.random.default_rng(0)
        for n in batch_sizes:
            x = rng.standard_normal((n, 3, crop_size, crop_size), dtype=np.float32)
            for _ in range(iterations):
                out = self.infer(x, 1)
            if not np.isfinite(out.probabilities).all():
                raise NonFiniteScores(f"NaN or infinite scores for a batch of {n} random frames")

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "version": self.version, "threads": str(self.threads)}
