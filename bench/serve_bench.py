"""How close does the daemon serve to the model's own speed? One run, interleaved.

    python bench/serve_bench.py                                   # squeezenet1_0 + resnet50, fp32 + int8
    python bench/serve_bench.py --models squeezenet1_0 --precisions int8 --streams 1 2 4 8
    python bench/serve_bench.py --tiny --no-onnx --out /tmp/b     # what the test suite runs

For each model and precision, in rounds that alternate between the modes so the
machine's noise hits all of them alike:
  (a) model       the model alone, batch 1, in this process
  (b) limit       JPEG decode + preprocess + model + top-k, in this process: the
                  most the daemon could do on one stream; run in chunks that
                  alternate with (c)'s, so both sides of a ratio see the same noise
  (c) served      the same JPEG frames through an edgeserver process over loopback
                  gRPC, one stream: throughput (frames sent back to back, policy
                  all; chunks of 20) and latency (one frame in flight at a time;
                  chunks of 10)
      floor       the latency of a bare gRPC stream with the daemon's threads and
                  no model (bench/grpc_floor.py), holding each frame as long as (b)
                  takes: the part of the added latency no daemon code can remove;
                  and the same floor holding each frame 0 ms ("floor hot"): what
                  those hand-offs cost without the idle gap a model's time leaves
  (d) N streams   aggregate throughput with N concurrent streams: against the
                  daemon as configured (batch sizes it measured at load), and
                  against a second daemon forced to batch 1, 2, 4, 8; a share of
                  the frames in every round
  (e) same host   a robot's camera frames (BGR arrays), one in flight, at the JPEG
                  size and at 640x480: TCP + JPEG (the client encodes), Unix socket +
                  raw pixels in the message, Unix socket + pixels in shared memory
Then ONNX Runtime (CPU provider) on the same models, fp32 and its own static int8
(best of several settings), model only; and the footprint: daemon RSS, time to
SERVING, client import time and memory.

Prints one table and the ratios the issue asks about; writes serve_bench.json and
serve_bench.png (latency over time, per-stage medians).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import torch

from edgeinfer.client import EdgeClient, EdgeInferError, FrameResult
from edgeinfer.client.api import channel_options
from edgeinfer.media.sample import synthetic_frame
from edgeinfer.server.batcher import cpu_thread
from edgeinfer.server.preprocess import JpegImage
from edgeinfer.server.workers import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from grpc_floor import busy_model  # noqa: E402  (bench/ is not a package)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def stage(self, name: str, value: float) -> None:
        self.stages.setdefault(name, []).append(value)

    def add_timed(self, started: float) -> float:
        """One in-process frame that took from ``started`` (perf_counter) until now; its ms."""
        ms = (time.perf_counter() - started) * 1e3
        self.latencies_ms.append(ms)
        self.frames += 1
        self.seconds += ms / 1e3
        return ms

    def row(self) -> dict:
        return {
            "fps": self.fps,
            "p50_ms": pct(self.latencies_ms, 50),
            "p95_ms": pct(self.latencies_ms, 95),
            "p99_ms": pct(self.latencies_ms, 99),
            "stages_ms": {k: statistics.median(v) for k, v in self.stages.items()},
            "frames": self.frames,
        }


# --- the daemon under test ----------------------------------------------------------


class DaemonProcess:
    """An edgeserver subprocess, as it runs on a robot: its own process and cores."""

    def __init__(
        self,
        models: list[str],
        repository: Path,
        threads: int,
        sock: Path | None,
        max_batch: int,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """``sock``: also listen on this Unix socket (None: TCP only, as --workers needs)."""
        self.port = free_port()
        self.sock = sock
        exe = shutil.which("edgeserver") or Path(sys.executable).with_name("edgeserver")
        # Without the console script (a checkout on PYTHONPATH, as bench/gpu_check.sh runs it): the module.
        launcher = [str(exe)] if Path(exe).exists() else [sys.executable, "-m", "edgeinfer.server.cli"]
        cmd = [
            *launcher,
            "--weights",
            "random",
            "--seed",
            "0",
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            *(["--unix-socket", str(sock)] if sock else []),
            "--repository",
            str(repository),
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
            "--log-level",
            "warning",
            *extra,
        ]
        for m in models:
            cmd += ["--model", m]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | (env or {})
        )
        # Its output is read all along (a pipe nobody reads fills up and stalls the writer); the tail is kept.
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._all_workers = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.startup_s = self._wait_serving(models[0])
            if "--workers" in extra:  # the first worker answers before the others listen
                while not self._all_workers.wait(0.1):
                    self._check_running()
        except BaseException:  # never served (or interrupted): nobody else holds it to stop it
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if " workers SERVING on " in line:
                self._all_workers.set()

    def _wait_serving(self, model: str) -> float:
        name, _, precision = model.partition(":")
        deadline = time.monotonic() + 300
        with EdgeClient(f"127.0.0.1:{self.port}") as c:
            while True:
                try:
                    c.wait_ready(name, precision=precision, timeout=2)
                    return time.perf_counter() - self.started
                except EdgeInferError:
                    self._check_running()
                    if time.monotonic() > deadline:
                        raise

    def _check_running(self) -> None:
        if self.proc.poll() is not None:  # it exited: say why instead of waiting on
            self._reader.join(5)
            output = "".join(self.output)
            raise RuntimeError(f"edgeserver exited with {self.proc.returncode}:\n{output[-3000:]}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class FloorProcess:
    """bench/grpc_floor.py: the same gRPC stream and threads as the daemon, no model."""

    def __init__(self, threads: int) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "grpc_floor.py"), "--port", "0", "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"grpc_floor.py did not start: {line}")
        self.target = f"127.0.0.1:{line[1]}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


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

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.seconds = time.perf_counter() - t0
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
    """Model-only medians (ms) for ORT fp32 and the best of several static-int8 settings."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeinfer.server import WeightsSource, get_spec
    from edgeinfer.server.weights import build_model

    model = build_model(get_spec(name), WeightsSource("random", seed=0))
    fp32_path = workdir / f"{name}.onnx"
    torch.onnx.export(
        model, (tensors[:1],), str(fp32_path), input_names=["x"], output_names=["y"], dynamo=False, opset_version=17
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": tensors[i : i + 1].numpy()} for i in range(len(tensors))])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    variants = {"ort fp32": fp32_path}
    settings = {
        "qdq per-channel": dict(quant_format=QuantFormat.QDQ, per_channel=True),
        "qdq per-channel reduce_range": dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True),
        "qoperator per-channel": dict(quant_format=QuantFormat.QOperator, per_channel=True),
        "qoperator per-tensor": dict(quant_format=QuantFormat.QOperator, per_channel=False),
    }
    for label, kw in settings.items():
        path = workdir / f"{name}-{label.replace(' ', '_')}.onnx"
        try:
            quantize_static(
                str(fp32_path), str(path), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kw
            )
            variants[f"ort int8 {label}"] = path
        except Exception as exc:  # a setting ORT cannot do for this graph is reported, not fatal
            log(f"  ORT int8 {label} failed: {exc}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in variants.items()}
    x = {"x": tensors[:1].numpy()}
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


# --- main --------------------------------------------------------------------------------


def ensure_int8(models: list[str], repository: Path, tiny: bool) -> None:
    from edgeinfer.quant import quantize
    from edgeinfer.server import WeightsSource
    from edgeinfer.server.artifacts import artifact_dir, default_engine

    for name in models:
        if not (artifact_dir(repository, name, default_engine()) / "edgeinfer.json").exists():
            log(f"quantizing {name} (synthetic calibration, random weights) into {repository}")
            quantize(
                name,
                calib="synthetic",
                out=repository,
                weights=WeightsSource("random", seed=0),
                frames=8 if tiny else 32,
                latency_iterations=2,
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["squeezenet1_0", "resnet50"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    p.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--frames", type=int, default=60, help="frames per round per mode")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--image-size", type=int, default=224, help="side of the square JPEG frames sent")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, daemon and in-process alike")
    p.add_argument("--daemon-threads", type=int, default=None, help="the daemon's --threads (default: --threads)")
    p.add_argument(
        "--daemon-env", action="append", default=[], metavar="NAME=VALUE", help="environment of the daemons only"
    )
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--repository", type=Path, default=ROOT / "bench" / "results" / "model-repo")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a few frames of everything (the test suite)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    if args.tiny:
        args.frames, args.rounds, args.streams = 6, 1, [1, 2]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if "int8" in args.precisions:
        ensure_int8(args.models, args.repository, args.tiny)

    rng = np.random.default_rng(0)
    frames_bgr = [synthetic_frame(int(i), args.image_size, args.image_size) for i in rng.integers(0, 999, 16)]
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames_bgr]
    per_round = [jpegs[i % len(jpegs)] for i in range(args.frames)]
    # (e): camera frames as the robot has them (BGR arrays), at the JPEG size and at 640x480.
    cam_bgr = [cv2.resize(f, (640, 480)) for f in frames_bgr[:4]]
    camera_rounds = {
        "": [frames_bgr[i % len(frames_bgr)] for i in range(args.frames)],
        " 640x480": [cam_bgr[i % 4] for i in range(args.frames)],
    }

    served_models = [f"{m}:{pr}" for m in args.models for pr in args.precisions]
    tmp = Path(tempfile.mkdtemp(prefix="edgebench-"))
    log(f"starting edgeserver with {', '.join(served_models)}")
    daemon_threads = args.daemon_threads or args.threads
    daemon_env = dict(kv.split("=", 1) for kv in args.daemon_env)
    daemon = DaemonProcess(
        served_models, args.repository, daemon_threads, tmp / "edge.sock", args.max_batch, env=daemon_env
    )
    ladder = ",".join(str(n) for n in (1, 2, 4, 8) if n <= args.max_batch)
    log(f"starting a second edgeserver forced to batch sizes {ladder} (for the batching comparison)")
    forced = DaemonProcess(
        served_models,
        args.repository,
        daemon_threads,
        tmp / "forced.sock",
        args.max_batch,
        ("--batch-sizes", ladder),
        env=daemon_env,
    )
    floor = FloorProcess(daemon_threads)
    tcp, uds, forced_tcp = f"127.0.0.1:{daemon.port}", f"unix:{daemon.sock}", f"127.0.0.1:{forced.port}"
    results: dict = {"config": vars(args) | {"out": str(args.out), "repository": str(args.repository)}, "rows": []}
    results["footprint"] = {"daemon_startup_s": daemon.startup_s, **client_footprint()}
    timelines: dict[str, list[float]] = {}
    try:
        for name in args.models:
            for precision in args.precisions:
                key = f"{name} {precision}"
                inproc = InProcess(name, precision, args.repository)
                tensor = inproc.preprocessed(jpegs[:1])[0]
                modes = {m: Samples() for m in ("a model", "b limit", "c served")}
                modes |= {m: Samples() for m in LATENCY_MODES}
                modes |= {f"e {path}{size} latency": Samples() for size in camera_rounds for path, _, _ in SAME_HOST}
                for n in args.streams:
                    modes |= {f"d {n} streams": Samples(), f"d {n} streams forced": Samples()}
                results.setdefault("batch_sizes", {})[key] = batch_sizes(tcp, name, precision)
                served_lat_timeline: list[float] = []
                d_frames = per_round[: max(4, args.frames // args.rounds)]  # (d) spread over the rounds
                for r in range(args.rounds):
                    log(f"{key}: round {r + 1}/{args.rounds}")
                    inproc.model_only(tensor, args.frames, modes["a model"])
                    # Every comparison runs in chunks, rotating which mode goes first: the machine's
                    # noise comes in bursts of seconds, longer than one mode's 60 frames.
                    # (b) and (c) throughput: frames back to back (policy all) in both.
                    for part, mode in interleaved(args.frames, THROUGHPUT_CHUNK, ["b limit", "c served"], r):
                        if mode == "b limit":
                            inproc.limit(per_round[part], modes[mode])
                        else:
                            _merge(modes[mode], served_throughput(tcp, name, precision, per_round[part]))
                    # (b) and (c) latency, and the floors: one frame in flight at a time.
                    for part, mode in interleaved(args.frames, E_CHUNK, LATENCY_MODES, r):
                        chunk = per_round[part]
                        if mode == "b limit latency":
                            inproc.limit(chunk, modes[mode])
                            continue
                        if mode == "c served latency":
                            lat = served_latency(tcp, name, precision, chunk)
                            served_lat_timeline += lat.latencies_ms
                        elif mode == "c floor latency":  # held as long as the daemon's work takes in process
                            done = modes["b limit latency"].latencies_ms or modes["b limit"].latencies_ms
                            lat = served_latency(floor.target, busy_model(statistics.median(done)), "", chunk)
                        else:  # "c floor hot latency": answered at once, no idle gap
                            lat = served_latency(floor.target, busy_model(0.0), "", chunk)
                        _merge(modes[mode], lat)
                    paths = [
                        (size, path, over_unix, enc) for size in camera_rounds for path, over_unix, enc in SAME_HOST
                    ]
                    for part, (size, path, over_unix, encoding) in interleaved(args.frames, E_CHUNK, paths):
                        chunk = camera_rounds[size][part]
                        lat = served_latency(uds if over_unix else tcp, name, precision, chunk, encoding)
                        _merge(modes[f"e {path}{size} latency"], lat)
                    log(f"{key}: round {r + 1}/{args.rounds}: {', '.join(map(str, args.streams))} concurrent streams")
                    for n in args.streams:
                        runs = [(f"d {n} streams", tcp), (f"d {n} streams forced", forced_tcp)]
                        for mode, target in _rotate(runs, r):
                            _merge(modes[mode], concurrent_streams(target, name, precision, d_frames, n))
                inproc.stop()
                timelines[key] = served_lat_timeline
                for mode, s in modes.items():
                    results["rows"].append({"model": name, "precision": precision, "mode": mode, **s.row()})
                if not args.no_onnx and precision == "fp32":
                    log(f"{name}: ONNX Runtime peer (export, quantize_static variants, timing)")

                    calib = inproc.preprocessed(jpegs)
                    peer = functools.partial(onnx_peer, name, calib, max(10, args.frames // 2), tmp, args.threads)
                    ort_ms = cpu_thread().call(peer)  # torch.onnx.export runs torch ops: the same one thread
                    for label, ms in ort_ms.items():
                        results["rows"].append(
                            {
                                "model": name,
                                "precision": label,
                                "mode": "a model (peer)",
                                "fps": 1e3 / ms,
                                "p50_ms": ms,
                                "p95_ms": float("nan"),
                                "p99_ms": float("nan"),
                                "stages_ms": {},
                                "frames": 0,
                            }
                        )
        results["footprint"]["daemon_rss_mb"] = daemon.rss_mb()
    finally:
        daemon.stop()
        forced.stop()
        floor.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = report(results)
    results["summary"] = summary
    (args.out / "serve_bench.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, timelines, args.out / "serve_bench.png")
    log(f"wrote {args.out / 'serve_bench.json'} and {args.out / 'serve_bench.png'}")
    return 0


def _rotate(items: list, by: int) -> list:
    """``items`` starting at ``by`` (mod its length): which mode goes first changes from chunk to chunk."""
    by %= len(items)
    return items[by:] + items[:by]


def interleaved(frames: int, chunk: int, items: list, offset: int = 0) -> Iterator[tuple[slice, Any]]:
    """(frames of the chunk, item) for every item on every ``chunk`` frames; the first item rotates per chunk."""
    for c, start in enumerate(range(0, frames, chunk)):
        for item in _rotate(items, c + offset):
            yield slice(start, start + chunk), item


def _merge(into: Samples, s: Samples) -> None:
    into.frames += s.frames
    into.seconds += s.seconds
    into.latencies_ms += s.latencies_ms
    for k, v in s.stages.items():
        into.stages.setdefault(k, []).extend(v)


def report(results: dict) -> dict:
    rows = results["rows"]
    head = f"{'model':<14}{'precision':<34}{'mode':<22}{'frames/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
    print(f"\n{head}  stages (median ms)")
    for r in rows:
        stages = " ".join(f"{k}={v:.2f}" for k, v in r["stages_ms"].items())
        print(
            f"{r['model']:<14}{r['precision']:<34}{r['mode']:<22}{r['fps']:>9.1f}{r['p50_ms']:>8.2f}"
            f"{r['p95_ms']:>8.2f}{r['p99_ms']:>8.2f}  {stages}"
        )

    def get(model: str, precision: str, mode: str) -> dict | None:
        return next((r for r in rows if (r["model"], r["precision"], r["mode"]) == (model, precision, mode)), None)

    summary: dict = {}
    print("\nratios")
    for model in dict.fromkeys(r["model"] for r in rows):
        for precision in ("fp32", "int8"):
            b, c = get(model, precision, "b limit"), get(model, precision, "c served")
            b_lat, lat = get(model, precision, "b limit latency"), get(model, precision, "c served latency")
            floor, hot = get(model, precision, "c floor latency"), get(model, precision, "c floor hot latency")
            if not (b and c and b_lat and lat and floor and hot):
                continue
            key = f"{model} {precision}"
            served_over_limit = c["fps"] / b["fps"]
            added = lat["p50_ms"] - b_lat["p50_ms"]
            floor_ms = floor["stages_ms"]["overhead"]  # its latency minus the time it held the frame
            # The same difference with each frame's own model time taken out first (median of latency
            # minus inference, served and in process): the model's time swings most on this machine,
            # between chunks too, and it is the same work on both sides.
            added_wo_model = lat["stages_ms"]["overhead"] - b_lat["stages_ms"]["overhead"]
            summary[key] = {
                "served_over_limit": served_over_limit,
                "added_latency_p50_ms": added,
                "added_latency_model_time_out_ms": added_wo_model,
                "grpc_floor_p50_ms": floor_ms,
                "added_above_floor_ms": added - floor_ms,
                "grpc_floor_hot_p50_ms": hot["stages_ms"]["overhead"],
            }
            print(
                f"  {key:<22} served/limit throughput {served_over_limit:5.2f}   "
                f"added latency p50 {added:+6.2f} ms (served one-at-a-time minus in-process)"
            )
            print(
                f"    of which the bare gRPC stream's floor {floor_ms:+.2f} ms (bench/grpc_floor.py, same hand-offs "
                f"and idle gap, no model), the daemon's own {added - floor_ms:+.2f} ms"
            )
            print(
                f"    with each frame's model time taken out first: added {added_wo_model:+.2f} ms, "
                f"the daemon's own {added_wo_model - floor_ms:+.2f} ms (the model's time swings most here)"
            )
            print(
                f"    the same floor answering at once, no idle gap: {hot['stages_ms']['overhead']:+.2f} ms "
                f"(the rest of the floor: the same hand-offs after {floor['stages_ms']['inference']:.1f} ms idle)"
            )
            sizes = results.get("batch_sizes", {}).get(key)
            print(f"    batching across streams (daemon's measured batch sizes: {sizes}; forced: 1-8)")
            for suffix in ("", " forced"):
                one = get(model, precision, f"d 1 streams{suffix}")
                for r in rows:
                    mode = r["mode"]
                    if not (one and r["model"] == model and r["precision"] == precision):
                        continue
                    if not (mode.startswith("d ") and mode.endswith(" streams" + suffix)):
                        continue
                    gain = r["fps"] / one["fps"] if one["fps"] else float("nan")
                    batch = r["stages_ms"].get("batch")
                    summary[key][mode] = {"fps": r["fps"], "gain_vs_1": gain, "median_batch": batch}
                    print(
                        f"    {mode:<20} {r['fps']:7.1f} frames/s  {gain:4.2f}x of one stream, "
                        f"median batch {r['stages_ms'].get('batch', 0):.0f}"
                    )
            # (e): camera frames; the latency counts the client's encoding (JPEG, or the copy in).
            for size in ("", " 640x480"):
                tj = get(model, precision, f"e tcp+jpeg{size} latency")
                if not tj:
                    continue
                label = size.strip() or f"{results['config']['image_size']}x{results['config']['image_size']}"
                line = [f"    same host {label}: p50 (overhead = latency minus inference) tcp+jpeg "]
                line.append(f"{tj['p50_ms']:.2f} ms ({tj['stages_ms']['overhead']:.2f})")
                for path in ("unix+raw", "unix+shm"):
                    r = get(model, precision, f"e {path}{size} latency")
                    if r:
                        ratio = tj["p50_ms"] / r["p50_ms"]
                        saved = tj["stages_ms"]["overhead"] - r["stages_ms"]["overhead"]
                        tag = f"{path.replace('+', '_')}_vs_tcp_jpeg{size.replace(' ', '_')}"
                        summary[key][f"{tag}_p50"] = ratio
                        summary[key][f"{tag}_overhead_saved_ms"] = saved
                        line.append(f", {path} {r['p50_ms']:.2f} ms ({r['stages_ms']['overhead']:.2f}): ")
                        line.append(f"{ratio:.2f}x, {saved:+.2f} ms saved")
                print("".join(line))
            shm = get(model, precision, "e unix+shm latency")
            if shm:  # against (c), whose JPEGs were encoded before the clock started
                ratio = lat["p50_ms"] / shm["p50_ms"]
                summary[key]["unix_shm_vs_pre_encoded_jpeg_p50"] = ratio
                print(f"    unix+shm vs tcp+jpeg already encoded (c): {ratio:.2f}x")
        peers = [r for r in rows if r["model"] == model and r["mode"] == "a model (peer)"]
        c8 = get(model, "int8", "c served")
        if peers and c8:
            best = max(peers, key=lambda r: r["fps"])
            summary[f"{model} vs onnxruntime"] = {
                "served_int8_fps": c8["fps"],
                "best_peer": best["precision"],
                "best_peer_fps": best["fps"],
            }
            print(
                f"  {model}: served int8 {c8['fps']:.1f} frames/s vs best ONNX Runtime model-only "
                f"{best['fps']:.1f} ({best['precision']}): {c8['fps'] / best['fps']:.2f}x"
            )
    fp = results["footprint"]
    print(
        f"\nfootprint: daemon RSS {fp.get('daemon_rss_mb', float('nan')):.0f} MB with all models above loaded, "
        f"{fp['daemon_startup_s']:.1f} s to SERVING; client import {fp['client_import_ms']:.0f} ms, "
        f"{fp['client_rss_mb']:.0f} MB RSS, imports torch: {fp['client_imports_torch']}"
    )
    return summary


def plot(results: dict, timelines: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(19, 4.8))
    for key, lat in timelines.items():
        ax1.plot(lat, label=key, linewidth=1)
    ax1.set_xlabel("frame (one in flight at a time, all rounds)")
    ax1.set_ylabel("client round-trip latency, ms")
    ax1.set_title("served latency over time")
    ax1.legend(fontsize=8)
    rows = [r for r in results["rows"] if r["mode"] in LATENCY_MODES]
    labels = []
    stages = ("decode", "preprocess", "queue", "inference")
    # The added latency, and the floor's share of it, written on the bars: report()'s figures.
    on_bar = {
        "c served latency": "added_latency_p50_ms",
        "c floor latency": "grpc_floor_p50_ms",
        "c floor hot latency": "grpc_floor_hot_p50_ms",
    }
    for i, r in enumerate(rows):
        labels.append(f"{r['model']} {r['precision']} {r['mode'][2:].removesuffix(' latency')}")
        summary = results["summary"].get(f"{r['model']} {r['precision']}", {})
        ms = summary.get(on_bar.get(r["mode"], ""))
        if ms is not None:
            text = f"{ms:+.1f}"
            if r["mode"] == "c served latency":  # and with each frame's model time taken out first
                text += f"\n({summary['added_latency_model_time_out_ms']:+.1f})"
            ax2.annotate(text, (i, r["p50_ms"]), ha="center", va="bottom", fontsize=6)
        bottom = 0.0
        for j, stage in enumerate(stages):
            v = r["stages_ms"].get(stage, 0.0)
            ax2.bar(i, v, bottom=bottom, color=f"C{j}", label=stage if i == 0 else None)
            bottom += v
        # What the stages do not cover: gRPC, the two processes, thread hand-offs.
        rest = max(0.0, r["p50_ms"] - bottom)
        ax2.bar(i, rest, bottom=bottom, color="C7", label="rest of p50 (gRPC, hand-offs)" if i == 0 else None)
    ax2.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90)
    ax2.set_ylabel("median ms per frame")
    ax2.set_xlabel(
        "on the bars: served minus limit (in brackets: model time taken out first), and the floors' own ms", fontsize=8
    )
    ax2.set_title("one frame in flight: in-process limit vs served vs bare-gRPC floor")
    ax2.legend(fontsize=8)
    same_host(results["rows"], ax3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def same_host(rows: list[dict], ax: Any) -> None:  # a matplotlib Axes
    """(e): each same-host path's cost outside the model (median latency minus inference), per frame size."""
    by_mode = {(r["model"], r["precision"], r["mode"]): r for r in rows}
    groups = list(dict.fromkeys((r["model"], r["precision"]) for r in rows if r["mode"].startswith("e ")))
    width = 0.8 / (2 * len(SAME_HOST))
    for i, (model, precision) in enumerate(groups):
        for j, size in enumerate(("", " 640x480")):
            for k, (path, _, _) in enumerate(SAME_HOST):
                r = by_mode.get((model, precision, f"e {path}{size} latency"))
                if r:
                    x = i + (j * len(SAME_HOST) + k - len(SAME_HOST) + 0.5) * width
                    label = f"{path}{size or ' small'}" if i == 0 else None
                    ax.bar(
                        x, r["stages_ms"]["overhead"], width, color=f"C{k}", alpha=1.0 if j == 0 else 0.55, label=label
                    )
    ax.set_xticks(range(len(groups)), [f"{m}\n{p}" for m, p in groups], fontsize=7)
    ax.set_ylabel("median ms: camera frame -> answer, minus inference")
    ax.set_title("same host: TCP+JPEG vs Unix+raw vs Unix+shared memory")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left", ncols=2)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
