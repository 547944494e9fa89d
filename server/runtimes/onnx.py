"""ONNX Runtime on the CPU: one InferenceSession per model, its SessionOptions set once.

Loads an ONNX artifact (int8 QDQ from ``edgequant --format onnx``, or fp32 from
``--format onnx-fp32``) from the bytes whose SHA-256 was just checked
(:func:`edgeinfer.server.artifacts.read_model_file`), so the file cannot change between
the check and the load. ORT fuses the QDQ pairs into QLinearConv / QLinearAdd /
QLinearConcat / QGemm at session creation (``optimized_model_filepath`` shows the graph
it runs; tests/quant/test_onnx_export.py checks it). No torch anywhere on this path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.server.artifacts import FORMAT_VERSION, SIDECAR, onnx_artifact_dir, read_model_file
from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.runtimes import BatchOutput, NonFiniteScores, top_k

__all__ = ["OnnxRuntime", "load_onnx_artifact", "ort_available", "session_options"]


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


def load_onnx_artifact(
    name: str, precision: str, repository: Path | None, *, threads: int = 1
) -> tuple[OnnxRuntime, dict[str, Any]]:
    """The ONNX artifact of ``name`` at ``precision`` in ``repository``, checked (SHA-256) and in a session.

    Every refusal is one line naming the model, the runtime and the fix (WeightsUnavailable).
    """
    repository = Path(repository or "model-repo")
    folder = onnx_artifact_dir(repository, name, precision)
    fmt = "onnx" if precision == "int8" else "onnx-fp32"
    how = f"edgequant --model {name} --format {fmt} --calib PATH --out {repository} (on a workstation)"
    who = f"{name} {precision} on onnxruntime"
    if not (folder / SIDECAR).is_file():
        raise WeightsUnavailable(
            f"{who}: no ONNX artifact in {repository} (looked for {folder / SIDECAR}); make one: {how}"
        )
    try:
        meta = json.loads((folder / SIDECAR).read_bytes())  # its own keys: not a TorchScript artifact's
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WeightsUnavailable(f"{who}: {folder / SIDECAR} cannot be read ({exc}); re-make it: {how}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or meta.get("format") != "onnx":
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise WeightsUnavailable(
            f"{who}: {folder / SIDECAR} is not an ONNX artifact's sidecar ({found}); re-make: {how}"
        )
    missing = [key for key in ("preprocessing", "labels", "precision") if key not in meta]
    if missing or not isinstance(meta.get("labels"), list):
        raise WeightsUnavailable(
            f"{who}: {folder / SIDECAR} lacks {', '.join(missing) or 'a labels list'}; re-make: {how}"
        )
    try:
        _, data = read_model_file(folder, meta, repository)
    except WeightsUnavailable as exc:
        raise WeightsUnavailable(f"{who}: {exc.details}") from None
    try:
        runtime = OnnxRuntime(data, threads=threads)
    except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, NotImplemented...: its own classes
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailable(
            f"{who}: onnxruntime cannot load {folder / meta['file']}: {reason[:200]}; re-make: {how}"
        ) from None
    return runtime, meta
