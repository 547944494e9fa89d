"""How close does the daemon serve to the model's own speed? One run, interleaved.

    python -m bench.serve_bench                                   # squeezenet1_0 + resnet50, fp32 + int8
    python -m bench.serve_bench --models squeezenet1_0 --precisions int8 --streams 1 2 4 8
    python -m bench.serve_bench --tiny --no-onnx --out /tmp/b     # what the test suite runs

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
Then ONNX Runtime (CPU provider) on the same models, fp32 and edgequant --format onnx's
int8 (the QDQ layout ORT fuses; the daemon serves it with --runtime onnxruntime), model only;
and the footprint: daemon RSS, time to SERVING, client import time and memory.

Prints one table and the ratios the issue asks about; writes serve_bench.json and
serve_bench.png (latency over time, per-stage medians).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.daemon import DaemonProcess, FloorProcess
from bench.grpc_floor import busy_model
from bench.modes import (
    E_CHUNK,
    LATENCY_MODES,
    SAME_HOST,
    THROUGHPUT_CHUNK,
    InProcess,
    batch_sizes,
    client_footprint,
    concurrent_streams,
    onnx_peer,
    served_latency,
    served_throughput,
)
from bench.report import plot, report
from bench.stats import Samples, interleaved, log, merge, rotate
from edgeinfer.media.sample import synthetic_frame
from edgeinfer.server.inference_thread import cpu_thread

ROOT = Path(__file__).resolve().parents[1]


# --- main --------------------------------------------------------------------------------


def ensure_int8(models: list[str], repository: Path, tiny: bool) -> None:
    """Quantize what the repository lacks, in a process of its own: calibrating in the bench's process
    left it slower at running the model after (a fresh clone's first limit measured 5.8 ms/frame for
    4.0), and the bench's limit runs in this process."""
    from edgeinfer.server.artifacts import artifact_dir, default_engine

    for name in models:
        if not (artifact_dir(repository, name, default_engine()) / "edgeinfer.json").exists():
            log(f"quantizing {name} (synthetic calibration, random weights) into {repository}")
            command = [sys.executable, "-m", "edgeinfer.quant.cli", "--model", name, "--calib", "synthetic"]
            command += ["--out", str(repository), "--weights", "random", "--seed", "0"]
            command += ["--frames", "8" if tiny else "32", "--latency-iterations", "2"]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


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
                            merge(modes[mode], served_throughput(tcp, name, precision, per_round[part]))
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
                        merge(modes[mode], lat)
                    paths = [
                        (size, path, over_unix, enc) for size in camera_rounds for path, over_unix, enc in SAME_HOST
                    ]
                    for part, (size, path, over_unix, encoding) in interleaved(args.frames, E_CHUNK, paths):
                        chunk = camera_rounds[size][part]
                        lat = served_latency(uds if over_unix else tcp, name, precision, chunk, encoding)
                        merge(modes[f"e {path}{size} latency"], lat)
                    log(f"{key}: round {r + 1}/{args.rounds}: {', '.join(map(str, args.streams))} concurrent streams")
                    for n in args.streams:
                        runs = [(f"d {n} streams", tcp), (f"d {n} streams forced", forced_tcp)]
                        for mode, target in rotate(runs, r):
                            merge(modes[mode], concurrent_streams(target, name, precision, d_frames, n))
                inproc.stop()
                timelines[key] = served_lat_timeline
                for mode, s in modes.items():
                    results["rows"].append({"model": name, "precision": precision, "mode": mode, **s.row()})
                if not args.no_onnx and precision == "fp32":
                    log(f"{name}: ONNX Runtime peer (fp32 and edgequant --format onnx int8, timing)")

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


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
