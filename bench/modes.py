"""What serve_bench measures, mode by mode: served throughput and latency, N streams, the
in-process limit, ONNX Runtime's peer figures and the client's footprint."""

from __future__ import annotations

import contextlib
import copy
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import torch

from bench.stats import Samples, run_concurrently
from edgeinfer.client import EdgeClient, FrameResult
from edgeinfer.client.api import channel_options
from edgeinfer.server.inference_thread import cpu_thread
from edgeinfer.server.preprocess import JpegImage

# --- the modes -------------------------------------------------------------------------

# (e): path name, over the Unix socket?, client encoding
SAME_HOST = (("tcp+jpeg", False, "jpeg"), ("unix+raw", True, "raw"), ("unix+shm", True, "shm"))
E_CHUNK = 10  # frames per stream before a latency comparison moves on to the next mode
# One frame in flight: the limit, the daemon, and the bare gRPC floor with and without a model's idle gap.
LATENCY_MODES = ["b limit latency", "c served latency", "c floor latency", "c floor hot latency"]
THROUGHPUT_CHUNK = 20  # frames per stream in the throughput comparison (b) vs (c)


@contextlib.contextmanager
def connected(target: str) -> Iterator[EdgeClient]:
    """A client whose channel is already connected: the clock never counts TCP or HTTP/2 set-up."""
    channel = grpc.insecure_channel(target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    with EdgeClient(target, timeout=120, channel=channel) as client:
        yield client


def served_throughput(target: str, name: str, precision: str, frames: list, encoding: str = "jpeg") -> Samples:
    """Frames back to back; frames/s in steady state, from the first answer to the last.

    The first answer (the stream's start and the pipeline filling) is left out of
    the rate and the latencies, so that short chunks measure what a long camera
    stream gets.
    """
    s = Samples()
    with connected(target) as client:
        first: float | None = None
        for r in client.stream(frames, name, precision=precision, drop_policy="all", encoding=encoding):
            if first is None:
                assert r.prediction is not None, r
                first = time.perf_counter()
            else:
                _record(s, r)
        assert first is not None, "no answer"
        s.seconds = time.perf_counter() - first
    return s


def _record(s: Samples, r: FrameResult) -> None:
    assert r.prediction is not None, r
    s.frames += 1
    s.latencies_ms.append(r.latency_ms or 0.0)
    t = r.prediction.timings
    for k in ("decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "total_ms"):
        s.stage(k.removesuffix("_ms"), getattr(t, k))
    # Everything but the model: the client's encoding, transport, decode, preprocessing, hand-offs.
    # The model's own time swings most on this machine, and it is the same work on every path.
    s.stage("overhead", (r.latency_ms or 0.0) - t.inference_ms)


def served_latency(target: str, name: str, precision: str, frames: list, encoding: str = "jpeg") -> Samples:
    """One frame in flight at a time: the added latency of the serving path."""
    s = Samples()
    answered = threading.Event()

    def one_at_a_time() -> Iterator[object]:
        for f in frames:
            answered.clear()
            yield f
            answered.wait(30)

    with connected(target) as client:
        t0 = time.perf_counter()
        for r in client.stream(one_at_a_time(), name, precision=precision, drop_policy="all", encoding=encoding):
            answered.set()
            _record(s, r)
        s.seconds = time.perf_counter() - t0
    return s


def batch_sizes(target: str, name: str, precision: str) -> list[int]:
    with EdgeClient(target) as c:
        return list(c.model(name, precision=precision).batch_sizes)


def concurrent_streams(target: str, name: str, precision: str, frames: list, n: int) -> Samples:
    s = Samples()
    lock = threading.Lock()

    def one() -> None:
        with EdgeClient(target, timeout=300) as c:
            for r in c.stream(frames, name, precision=precision, drop_policy="all"):
                with lock:
                    s.frames += 1
                    s.latencies_ms.append(r.latency_ms or 0.0)
                    s.stage("batch", float(r.prediction.batch_size if r.prediction else 0))

    s.seconds = run_concurrently(one, n)
    return s


class InProcess:
    """(a) and (b): this process, same threads, same preprocessing as the daemon."""

    def __init__(self, name: str, precision: str, repository: Path) -> None:
        from edgeinfer.server import WeightsSource, load_model

        self.model = load_model(
            name, precision=precision, repository=repository, weights=WeightsSource("random", seed=0)
        )
        self.runner = self.model.scheduler.runner

    def model_only(self, tensor: torch.Tensor, n: int, s: Samples) -> None:
        # On the CPU inference thread, as in the daemon: one OpenMP team in this process too.
        cpu_thread().call(lambda: self._model_only(tensor, n, s))

    def limit(self, jpegs: list[bytes], s: Samples) -> None:
        cpu_thread().call(lambda: self._limit(jpegs, s))

    def preprocessed(self, jpegs: list[bytes]) -> torch.Tensor:
        return cpu_thread().call(lambda: torch.stack([self.model.preprocessor(JpegImage(j)).tensor for j in jpegs]))

    def top5(self, jpegs: list[bytes]) -> list[list[int]]:
        """The classes the daemon's path ranks first, per JPEG (decode + preprocessing + model, in turn)."""
        batch = self.preprocessed(jpegs)
        return cpu_thread().call(lambda: self.runner.infer(batch, 5)).indices.tolist()

    def _model_only(self, tensor: torch.Tensor, n: int, s: Samples) -> None:
        x = tensor[None]
        for _ in range(n):
            t = time.perf_counter()
            self.runner.infer(x, 5)
            s.add_timed(t)

    def _limit(self, jpegs: list[bytes], s: Samples) -> None:
        for data in jpegs:
            t = time.perf_counter()
            pre = self.model.preprocessor(JpegImage(data))
            out = self.runner.infer(pre.tensor[None], 5)
            ms = s.add_timed(t)
            s.stage("decode", pre.decode_ms)
            s.stage("preprocess", pre.preprocess_ms)
            s.stage("inference", out.inference_ms)
            s.stage("overhead", ms - out.inference_ms)  # as _record() counts it for a served frame

    def stop(self) -> None:
        self.model.stop()


# --- ONNX Runtime, the peer -------------------------------------------------------


def onnx_peer(name: str, tensors: torch.Tensor, iterations: int, workdir: Path, threads: int) -> dict[str, float]:
    """Model-only medians (ms) of ONNX Runtime fp32 and int8, as the daemon's ONNX runtime runs them.

    int8 is edgequant --format onnx's artifact (QDQ, uint8 activations, per-channel weights), which ORT
    fuses into QLinear kernels. The peer this replaces quantized with onnxruntime.quantization's defaults
    on a legacy export, which ORT did not fuse: its int8 ran slower than its fp32 (37 vs 28.6 ms on
    SqueezeNet), and the README's "int8 serves 4.6x ONNX Runtime's best" compared against that (issue 27).
    """
    import onnxruntime as ort

    from edgeinfer.quant.onnx_export import export_onnx, quantize_for_onnx
    from edgeinfer.server import WeightsSource, get_spec
    from edgeinfer.server.runtimes.onnx import session_options
    from edgeinfer.server.weights import build_model

    model = build_model(get_spec(name), WeightsSource("random", seed=0))
    example = tensors[:2]
    variants = {"ort fp32": export_onnx(model, example, workdir / f"{name}-fp32.onnx")}
    batches = [tensors[i : i + 8] for i in range(0, len(tensors), 8)]
    quantized = quantize_for_onnx(copy.deepcopy(model), batches, example=example)
    variants["ort int8 qdq (edgequant --format onnx)"] = export_onnx(quantized, example, workdir / f"{name}-int8.onnx")
    opts = session_options(threads)
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in variants.items()}
    x = {"input": tensors[:1].numpy()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(None, x)
    for _ in range(iterations):
        for k, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, x)
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


# --- footprint -------------------------------------------------------------------------


def client_footprint() -> dict[str, float]:
    """Import time and resident memory of a fresh process that imports only the client."""
    # VmRSS, not ru_maxrss: Linux carries ru_maxrss across execve, so a child of this
    # (large) process would report the parent's peak.
    code = (
        "import time; t = time.perf_counter(); import edgeinfer.client; dt = time.perf_counter() - t; import sys; "
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]; "
        "print(dt * 1e3, int(rss) / 1024, 'torch' in sys.modules)"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        for _ in range(3)
    ]
    return {
        "client_import_ms": statistics.median(float(r[0]) for r in runs),
        "client_rss_mb": statistics.median(float(r[1]) for r in runs),
        "client_imports_torch": runs[0][2] == "True",
    }
