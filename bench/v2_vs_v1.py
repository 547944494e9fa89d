"""What does the KServe v2 protocol cost next to edgeinfer.v1? Same daemon, frames and model; interleaved.

    python -m bench.v2_vs_v1                         # squeezenet1_0 in an edgeserver process, ~2 minutes at most
    python -m bench.v2_vs_v1 --tiny --out /tmp/b     # seconds: what the test suite runs
    python -m bench.v2_vs_v1 --target 127.0.0.1:50051 --model resnet50   # a daemon already running

Modes, each on the same JPEG frames, top 5 classes asked for, in rounds that
rotate their order so the machine's noise hits them alike:
  unary     one request in flight at a time (latency):
              v1 classify      EdgeClient.classify
              v2 infer         tritonclient ModelInfer, classification output (class_count=5)
              v2 infer probs   tritonclient ModelInfer, the full FP32 [1, 1000] probabilities
  1 stream  frames back to back on one stream (throughput; latency includes the queue):
              v1 stream        EdgeClient.stream, drop policy all
              v2 stream        tritonclient ModelStreamInfer (start_stream / async_stream_infer)
  N streams the same on N concurrent streams, each its own client (aggregate throughput)

Latency is measured in the client, from the request handed to the client
library to its answer; "daemon" is the daemon's own total for the frame (from
the v1 prediction's timings and the v2 response's parameters), so that the
difference shows whether a protocol's cost is in the daemon or in the clients;
"overhead" is the latency minus the frame's forward pass, the part a protocol
can change (the model's time is the same work on both, and the noisiest).

Prints medians and v2/v1 ratios; writes v2_vs_v1.json and v2_vs_v1.png.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc

from bench.stats import log, run_concurrently
from bench.v2_report import plot, report
from edgeinfer.client import EdgeClient
from edgeinfer.client.frames import Encoder, Frame
from edgeinfer.media.sample import synthetic_frame

ROOT = Path(__file__).resolve().parents[1]
TOP_K = 5
UNARY = ("v1 classify", "v2 infer", "v2 infer probs")
STREAM = ("v1 stream", "v2 stream")


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)  # latency minus the model's forward pass
    frames: int = 0
    seconds: float = 0.0

    def add(self, other: Samples) -> None:
        self.latencies_ms += other.latencies_ms
        self.server_ms += other.server_ms
        self.overhead_ms += other.overhead_ms
        self.frames += other.frames
        self.seconds += other.seconds

    def row(self) -> dict[str, float | int]:
        def median(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        return {
            "frames": self.frames,
            "fps": self.frames / self.seconds if self.seconds else 0.0,
            "p50_ms": median(self.latencies_ms),
            "p95_ms": float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("nan"),
            "server_p50_ms": median(self.server_ms),
            "overhead_p50_ms": median(self.overhead_ms),
        }

    def answer(self, latency_ms: float, server_ms: float, inference_ms: float) -> None:
        self.latencies_ms.append(latency_ms)
        self.server_ms.append(server_ms)
        self.overhead_ms.append(latency_ms - inference_ms)
        self.frames += 1


# -- edgeinfer.v1 ---------------------------------------------------------------------


def until(frames: Iterable[bytes], deadline: float) -> Iterator[bytes]:
    """``frames`` while the chunk's share of --max-seconds lasts (the first one always): a loaded machine
    gets fewer frames per mode, not a run without end."""
    for i, f in enumerate(frames):
        if i and time.perf_counter() > deadline:
            return
        yield f


def v1_classify(target: str, model: str, frames: list[bytes], deadline: float = math.inf) -> Samples:
    s = Samples()
    with EdgeClient(target, timeout=120) as client:
        client.models()  # connected before the clock starts
        t0 = time.perf_counter()
        for f in until(frames, deadline):
            sent = time.perf_counter()
            p = client.classify(f, model, top_k=TOP_K)
            s.answer((time.perf_counter() - sent) * 1e3, p.timings.total_ms, p.timings.inference_ms)
        s.seconds = time.perf_counter() - t0
    return s


def v1_stream(target: str, model: str, frames: list[bytes], deadline: float = math.inf) -> Samples:
    s = Samples()
    with EdgeClient(target, timeout=300) as client:
        client.models()
        t0 = time.perf_counter()
        for r in client.stream(until(frames, deadline), model, top_k=TOP_K, drop_policy="all"):
            if r.prediction is None:
                raise RuntimeError(f"v1 stream: frame {r.sequence} got {r.kind}: {r.error or r.dropped}")
            t = r.prediction.timings
            s.answer(r.latency_ms or 0.0, t.total_ms, t.inference_ms)
        s.seconds = time.perf_counter() - t0
    return s


# -- KServe v2 through tritonclient ---------------------------------------------------


def _image(frame: bytes) -> tc.InferInput:
    tensor = tc.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[frame]], dtype=np.object_))
    return tensor


def _answer(s: Samples, latency_ms: float, result: tc.InferResult) -> None:
    params = result.get_response().parameters
    s.answer(latency_ms, params["total_ms"].double_param, params["inference_ms"].double_param)


def v2_infer(
    target: str, model: str, frames: list[bytes], deadline: float = math.inf, *, probabilities: bool = False
) -> Samples:
    s = Samples()
    outputs = None if probabilities else [tc.InferRequestedOutput("PROBABILITIES", class_count=TOP_K)]
    client = tc.InferenceServerClient(target)
    try:
        client.is_server_ready()  # connected before the clock starts
        t0 = time.perf_counter()
        for f in until(frames, deadline):
            sent = time.perf_counter()
            result = client.infer(model, [_image(f)], outputs=outputs, client_timeout=120)
            result.as_numpy("PROBABILITIES")  # decoded, as a caller would
            _answer(s, (time.perf_counter() - sent) * 1e3, result)
        s.seconds = time.perf_counter() - t0
    finally:
        client.close()
    return s


def v2_stream(target: str, model: str, frames: list[bytes], deadline: float = math.inf) -> Samples:
    s = Samples()
    answers: queue.SimpleQueue[tuple[float, Any, Any]] = queue.SimpleQueue()
    sent: dict[str, float] = {}
    outputs = [tc.InferRequestedOutput("PROBABILITIES", class_count=TOP_K)]
    client = tc.InferenceServerClient(target)
    try:
        client.is_server_ready()
        client.start_stream(callback=lambda result, error: answers.put((time.perf_counter(), result, error)))
        t0 = time.perf_counter()
        for i, f in enumerate(until(frames, deadline)):
            sent[str(i)] = time.perf_counter()
            client.async_stream_infer(model, [_image(f)], outputs=outputs, request_id=str(i))
        for _ in sent:
            at, result, error = answers.get(timeout=300)
            if error is not None:
                raise RuntimeError(f"v2 stream: {error}")
            result.as_numpy("PROBABILITIES")
            _answer(s, (at - sent[result.get_response().id]) * 1e3, result)
        s.seconds = time.perf_counter() - t0
        client.stop_stream()
    finally:
        client.close()
    return s


def concurrently(
    run: Callable[[str, str, list[bytes], float], Samples],
    n: int,
    target: str,
    model: str,
    frames: list[bytes],
    deadline: float = math.inf,
) -> Samples:
    """``n`` streams at once, each with its own client; throughput over the whole run."""
    parts: list[Samples] = []
    seconds = run_concurrently(lambda: parts.append(run(target, model, frames, deadline)), n)
    total = Samples()
    for p in parts:
        total.add(p)
    total.seconds = seconds
    return total


# -- the run --------------------------------------------------------------------------


def make_frames(count: int, size: int) -> list[bytes]:
    encoder = Encoder("jpeg", 90)
    return [encoder.to_proto(Frame(synthetic_frame(i, size, size))).jpeg for i in range(count)]


def run(
    target: str,
    model: str,
    *,
    rounds: int,
    unary_frames: int,
    stream_frames: int,
    streams: int,
    max_seconds: float,
    frame_size: int = 224,
) -> dict[str, Any]:
    """Interleaved rounds, within ``max_seconds`` (each mode's chunk gets its share; no round starts past it)."""
    frames = make_frames(8, frame_size)
    unary = (frames * (unary_frames // len(frames) + 1))[:unary_frames]
    stream = (frames * (stream_frames // len(frames) + 1))[:stream_frames]
    n_streams = f"{streams} streams"
    modes: dict[str, Callable[[float], Samples]] = {
        "v1 classify": lambda d: v1_classify(target, model, unary, d),
        "v2 infer": lambda d: v2_infer(target, model, unary, d),
        "v2 infer probs": lambda d: v2_infer(target, model, unary, d, probabilities=True),
        "v1 stream": lambda d: v1_stream(target, model, stream, d),
        "v2 stream": lambda d: v2_stream(target, model, stream, d),
        f"v1 {n_streams}": lambda d: concurrently(v1_stream, streams, target, model, stream, d),
        f"v2 {n_streams}": lambda d: concurrently(v2_stream, streams, target, model, stream, d),
    }
    # Each mode's chunk stops sending after its share of max_seconds (on a machine that is not
    # overloaded the chunks end well before: the share only bounds the run).
    share = max_seconds / (rounds * len(modes))
    # Warm-up: each client path once, outside the figures.
    v1_classify(target, model, frames[:1])
    v2_infer(target, model, frames[:1])
    samples = {name: Samples() for name in modes}
    fps_by_round: dict[str, list[float]] = {name: [] for name in modes}
    started = time.perf_counter()
    done = 0
    order = list(modes)
    for r in range(rounds):
        if r and time.perf_counter() - started > max_seconds:
            log(f"stopping after {r} rounds: past --max-seconds {max_seconds:.0f}")
            break
        for name in order[r % len(order) :] + order[: r % len(order)]:
            s = modes[name](time.perf_counter() + share)
            samples[name].add(s)
            fps_by_round[name].append(s.frames / s.seconds if s.seconds else 0.0)
        done += 1
        log(f"round {r + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)")
    rows = {name: s.row() | {"fps_rounds": fps_by_round[name]} for name, s in samples.items()}
    # Throughput: the median of the rounds' rates (each round's chunk saw that round's noise).
    for name, row in rows.items():
        row["fps"] = statistics.median(fps_by_round[name]) if fps_by_round[name] else 0.0

    def ratio(a: str, b: str, key: str) -> float:
        return rows[a][key] / rows[b][key] if rows[b][key] else float("nan")

    ratios = {
        "unary_p50_v2_over_v1": ratio("v2 infer", "v1 classify", "p50_ms"),
        "unary_probs_p50_v2_over_v1": ratio("v2 infer probs", "v1 classify", "p50_ms"),
        "unary_server_p50_v2_over_v1": ratio("v2 infer", "v1 classify", "server_p50_ms"),
        "stream_fps_v2_over_v1": ratio("v2 stream", "v1 stream", "fps"),
        "streams_fps_v2_over_v1": ratio(f"v2 {n_streams}", f"v1 {n_streams}", "fps"),
        "unary_added_ms_v2_minus_v1": rows["v2 infer"]["p50_ms"] - rows["v1 classify"]["p50_ms"],
        # With each request's forward pass taken out: what is left is the protocol's and the path's cost.
        "unary_overhead_p50_ms_v1": rows["v1 classify"]["overhead_p50_ms"],
        "unary_overhead_p50_ms_v2": rows["v2 infer"]["overhead_p50_ms"],
        "unary_overhead_p50_ms_v2_probs": rows["v2 infer probs"]["overhead_p50_ms"],
    }
    return {
        "config": {
            "target": target,
            "model": model,
            "rounds": done,
            "unary_frames": unary_frames,
            "stream_frames": stream_frames,
            "streams": streams,
            "frame_size": frame_size,
            "jpeg_bytes_median": statistics.median(len(f) for f in frames),
            "top_k": TOP_K,
        },
        "modes": rows,
        "ratios": ratios,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", help="a daemon already running (default: start an edgeserver process)")
    p.add_argument("--model", default="squeezenet1_0")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--unary-frames", type=int, default=10, help="requests per unary mode per round")
    p.add_argument("--stream-frames", type=int, default=12, help="frames per stream per round")
    p.add_argument("--streams", type=int, default=4, help="concurrent streams of the N-streams modes")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=90.0,
        help="the run's time budget: each mode's chunk stops sending after its share, no round starts past it",
    )
    p.add_argument("--threads", type=int, default=2, help="the edgeserver's --threads")
    p.add_argument("--tiny", action="store_true", help="1 round of a few frames, 2 streams: seconds")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.tiny:
        args.rounds, args.unary_frames, args.stream_frames, args.streams = 1, 2, 3, 2
    for name in ("rounds", "unary_frames", "stream_frames", "streams"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    daemon = None
    if args.target is None:
        from bench.daemon import DaemonProcess

        log(f"starting edgeserver with {args.model} (random weights, seed 0)")
        daemon = DaemonProcess([args.model], Path(tempfile.mkdtemp()), args.threads, None, 8)
        args.target = f"127.0.0.1:{daemon.port}"
    try:
        result = run(
            args.target,
            args.model,
            rounds=args.rounds,
            unary_frames=args.unary_frames,
            stream_frames=args.stream_frames,
            streams=args.streams,
            max_seconds=args.max_seconds,
        )
    finally:
        if daemon is not None:
            daemon.stop()
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "v2_vs_v1.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "v2_vs_v1.png")
    log(f"wrote {args.out / 'v2_vs_v1.json'} and {args.out / 'v2_vs_v1.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
