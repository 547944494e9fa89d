"""CUDA fp16 (channels_last) vs fp32: model throughput by batch size, and the daemon's batching.

    python bench/gpu_fp16.py --out bench/results      (bench/gpu_check.sh runs it)

Model-only medians per batch size for each precision, interleaved; then the
daemon in-process with 1, 2, 4, 8 concurrent streams (fp16, --max-batch 8) to
show what batching across streams buys on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch


def model_only(names: list[str], batches: list[int], iterations: int) -> list[dict]:
    from edgeinfer.server import WeightsSource, load_model

    rows = []
    for name in names:
        runners = {
            p: load_model(name, device="cuda", precision=p, weights=WeightsSource("random", seed=0))
            for p in ("fp16", "fp32")
        }
        for b in batches:
            size = runners["fp16"].input_size
            times: dict[str, list[float]] = {p: [] for p in runners}
            for _ in range(iterations):
                for p, m in runners.items():
                    x = torch.randn(b, 3, size, size, device="cuda", dtype=m.scheduler.runner.dtype)
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    m.scheduler.runner.infer(x, 5)
                    times[p].append((time.perf_counter() - t) * 1e3)
            for p, ts in times.items():
                ms = statistics.median(ts)
                rows.append({"model": name, "precision": p, "batch": b, "median_ms": ms, "images_per_s": b / ms * 1e3})
                print(f"{name:<14}{p:<6} batch {b:>3}: {ms:8.2f} ms  {b / ms * 1e3:9.0f} img/s", flush=True)
        for m in runners.values():
            m.stop()
    return rows


def served(name: str, streams_list: list[int], frames: int) -> list[dict]:
    from edgeinfer.client import EdgeClient
    from edgeinfer.client.sample import synthetic_frame
    from edgeinfer.server import Daemon, WeightsSource, load_model

    daemon = Daemon(["127.0.0.1:0"], max_streams=16).start()
    daemon.add_model(load_model(name, device="cuda", weights=WeightsSource("random", seed=0), max_batch=8))
    daemon.mark_ready()
    image = synthetic_frame(1, 640, 480)
    rows = []
    try:
        for n in streams_list:
            done = []

            def one(done: list = done) -> None:
                with EdgeClient(f"127.0.0.1:{daemon.port}") as c:
                    done.extend(r for r in c.stream([image] * frames, name, drop_policy="all") if r.prediction)

            threads = [threading.Thread(target=one) for _ in range(n)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - t
            batch = statistics.mean(r.prediction.batch_size for r in done)
            rows.append({"model": name, "streams": n, "frames_per_s": len(done) / elapsed, "mean_batch": batch})
            print(f"served {name} fp16, {n} streams: {len(done) / elapsed:7.0f} frames/s, mean batch {batch:.1f}")
    finally:
        daemon.stop(grace=0)
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--iterations", type=int, default=30)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    rows = model_only(["squeezenet1_0", "resnet50"], [1, 8, 32], args.iterations)
    serving = served("resnet50", [1, 2, 4, 8], frames=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_fp16.json").write_text(json.dumps({"model_only": rows, "served": serving}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
