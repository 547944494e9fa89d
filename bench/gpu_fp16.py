"""CUDA fp16 (channels_last) vs fp32, CUDA graphs, and what batching across streams buys on a GPU.

    python -m bench.gpu_fp16 --out bench/results/gpu          (bench/gpu_check.sh runs it)
    python -m bench.gpu_fp16 --device cpu --tiny --out /tmp/g  (dry run of the same code on the CPU)
    python -m bench.gpu_fp16 --from-log LOG --skip-rounds 1    (rebuild a run cut short from its progress lines)

Three parts, each interleaved where it compares:
1. model only, in process: median ms and images/s per batch size, fp32 vs fp16,
   eager and replayed as CUDA graphs;
2. preprocessing of one 640x480 JPEG on the device (nvjpeg decode + resize +
   normalize, as the daemon's stream threads run it) vs on the CPU;
3. served: edgeserver in its own process (as on a robot), loopback gRPC, 1/2/4/8
   concurrent streams sending already-encoded JPEG frames (drop policy "all"),
   each stream a client process of its own (stream_clients.py); batching off
   (--max-batch 1), on (--max-batch 8) and, on CUDA, on with --cuda-graphs in one
   daemon process and in two (edgeserver --workers 2: one port, the kernel spreads
   the streams' connections; on the CPU dry run, "on x2" without graphs); the
   daemons' CPU use per run; every daemon warmed up, then interleaved rounds.
Prints a table and ratios, writes gpu_fp16.json (after each part) and gpu_fp16.png under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench.gpu_report import from_log, plot, report


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sample_jpeg() -> bytes:
    """One 640x480 camera-like frame, JPEG at quality 90 (the client's default)."""
    from edgeinfer.client.frames import Encoder, Frame
    from edgeinfer.media.sample import synthetic_frame

    return Encoder("jpeg", 90).to_proto(Frame(synthetic_frame(1, 640, 480))).jpeg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(names: list[str], device: torch.device, variants: list[tuple], batches: list[int], iters: int) -> list:
    """``variants``: (label, precision, CUDA graphs) tuples, timed in turn at each batch size."""
    from edgeinfer.server import WeightsSource, load_model

    rows = []
    for name in names:
        progress(f"model only: loading {name} {'/'.join(v[0] for v in variants)} on {device}")
        runners = {
            label: load_model(
                name,
                device=device,
                precision=precision,
                weights=WeightsSource("random", seed=0),
                max_batch=max(batches) if graphs else 1,  # graphs: one per power of two up to the largest
                cuda_graphs=graphs,
            )
            for label, precision, graphs in variants
        }
        try:
            size = next(iter(runners.values())).input_size
            for b in batches:
                times: dict[str, list[float]] = {v: [] for v in runners}
                inputs = {
                    v: torch.randn(b, 3, size, size, device=device, dtype=m.scheduler.runner.dtype)
                    for v, m in runners.items()
                }
                for v, m in runners.items():  # warm-up: cuDNN picks its kernels once per shape
                    m.scheduler.runner.infer(inputs[v], 5)
                for _ in range(iters):
                    for v, m in runners.items():
                        sync(device)
                        t = time.perf_counter()
                        m.scheduler.runner.infer(inputs[v], 5)  # returns top-k on the host: waits for the GPU
                        times[v].append((time.perf_counter() - t) * 1e3)
                for v, ts in times.items():
                    ms = statistics.median(ts)
                    rows.append(
                        {"model": name, "precision": v, "batch": b, "median_ms": ms, "images_per_s": b / ms * 1e3}
                    )
                    progress(f"  {name:<14}{v:<12} batch {b:>3}: {ms:8.2f} ms  {b / ms * 1e3:9.0f} img/s")
        finally:
            for m in runners.values():
                m.stop()
    return rows


def preprocessing(device: torch.device, dtype: torch.dtype, iters: int) -> list[dict]:
    from edgeinfer.server.preprocess import JpegImage, Preprocessor
    from edgeinfer.server.registry import get_spec

    cfg = get_spec("resnet50").preprocessing
    data = JpegImage(sample_jpeg())
    places = {"cpu": Preprocessor(cfg, device=torch.device("cpu"))}
    if device.type == "cuda":
        places[device.type] = Preprocessor(cfg, device=device, dtype=dtype)
    times: dict[str, list[float]] = {k: [] for k in places}
    for pre in places.values():
        pre(data)  # warm-up (nvjpeg handle, CUDA kernels)
    for _ in range(iters):
        for k, pre in places.items():
            t = time.perf_counter()
            pre(data)
            sync(device)  # the tensor is ready on the device
            times[k].append((time.perf_counter() - t) * 1e3)
    rows = [{"where": k, "jpeg": "640x480", "median_ms": statistics.median(ts)} for k, ts in times.items()]
    for r in rows:
        progress(f"  preprocessing a 640x480 JPEG on the {r['where']}: {r['median_ms']:.2f} ms")
    return rows


def served(
    name: str, device: torch.device, precision: str, streams_list: list[int], frames: int, rounds: int
) -> list[dict]:
    """Batching off (--max-batch 1), on (8) and, on CUDA, on with --cuda-graphs, in one daemon and in two.

    Each stream is a client process of its own (stream_clients.py), so the clients
    cannot be the ceiling; the daemons' CPU use over each run says whether they are.
    """
    from bench.daemon import DaemonProcess
    from bench.stream_clients import run_streams

    image = sample_jpeg()  # encoded once: the clients cost no encoding
    settings = [("off", 1, ()), ("on", 8, ())]
    if device.type == "cuda":
        graphs = ("--cuda-graphs",)
        settings += [("on+graphs", 8, graphs), ("on+graphs x2", 8, (*graphs, "--workers", "2"))]
    else:  # the dry run still starts a daemon with workers
        settings += [("on x2", 8, ("--workers", "2"))]
    labels = "/".join(b for b, *_ in settings)
    progress(f"served: starting edgeserver {name} {precision} on {device}, batching {labels}")
    daemons: dict[str, DaemonProcess] = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(8) as pool:

        def start(most: int, extra: tuple[str, ...]) -> DaemonProcess:
            return DaemonProcess(
                [name],
                Path(tmp) / "repo",
                threads=4,
                sock=None,
                max_batch=most,
                extra=("--device", str(device), "--precision", precision, *extra),
            )

        try:
            # All at once: each loads, warms up and captures its graphs on its own.
            started = {batching: pool.submit(start, most, extra) for batching, most, extra in settings}
            failed = []
            for batching, future in started.items():  # every daemon that did start is stopped below
                try:
                    daemons[batching] = future.result()
                except Exception as exc:
                    failed.append(exc)
            if failed:
                raise failed[0]

            def one_run(d: DaemonProcess, n: int, frames: int) -> dict:
                return run_streams([f"127.0.0.1:{d.port}"], name, image, n, frames, daemon_pids=[d.proc.pid])

            for d in daemons.values():  # not timed: each stream thread's first frames (CUDA streams, nvJPEG state)
                one_run(d, max(streams_list), 5)
            runs: dict[tuple[int, str], list[dict]] = {}
            for r in range(rounds):
                for n in streams_list:
                    for batching, d in daemons.items():
                        got = one_run(d, n, frames)
                        runs.setdefault((n, batching), []).append(got)
                        split = got["streams_per_worker"]
                        progress(
                            f"    {n} streams, batching {batching}: {got['fps']:.0f} frames/s"
                            f"  (daemon {got['daemon_cores']:.2f} cores, clients {got['client_cores']:.2f},"
                            f" batch {got['mean_batch']:.1f})"
                            + (f"  streams per worker {'/'.join(map(str, split))}" if len(split) > 1 else "")
                        )
                progress(f"  round {r + 1}/{rounds} done")
        finally:
            for d in daemons.values():  # SIGTERM to all first: they drain at the same time
                d.proc.terminate()
            for d in daemons.values():
                d.stop()
    rows = []
    for (n, batching), got in sorted(runs.items()):
        rows.append(
            {
                "model": name,
                "precision": precision,
                "streams": n,
                "batching": batching,
                "frames_per_s": statistics.median(g["fps"] for g in got),
                "runs_fps": [g["fps"] for g in got],
                "mean_batch": statistics.mean(g["mean_batch"] for g in got),
                "inference_ms_p50": statistics.median(g["inference_ms_p50"] for g in got),
                "daemon_cores": statistics.median(g["daemon_cores"] for g in got),
                "client_cores": statistics.median(g["client_cores"] for g in got),
                # How each run's streams fell on the workers (x2): the kernel's pick, one per connection.
                "streams_per_worker": [g["streams_per_worker"] for g in got],
                "answered": sum(g["answered"] for g in got),
                "sent": sum(g["sent"] for g in got),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a dry run of the same code, fp32)")
    p.add_argument("--models", nargs="+", default=["squeezenet1_0", "resnet50"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--frames", type=int, default=80, help="frames per stream in each served run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the served runs")
    parts = ["model", "preprocessing", "served"]
    p.add_argument("--parts", nargs="+", choices=parts, default=parts, help="which of the three parts to run")
    p.add_argument("--tiny", action="store_true", help="a few iterations and frames: checks that it all runs")
    p.add_argument("--from-log", type=Path, help="rebuild the JSON, plot and table from a run's progress log")
    p.add_argument("--skip-rounds", type=int, default=0, help="with --from-log: served rounds to leave out")
    args = p.parse_args(argv)
    if args.from_log:
        return finish(from_log(args.from_log, args.skip_rounds), args.out, [])
    if args.tiny:
        args.iterations, args.frames, args.rounds = 2, 3, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 1
    if device.type == "cuda":
        variants = [
            ("fp16", "fp16", False),
            ("fp32", "fp32", False),
            ("fp16+graphs", "fp16", True),
            ("fp32+graphs", "fp32", True),
        ]
    else:
        variants = [("fp32", "fp32", False)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"
    results: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "model_only": [],
        "preprocessing": [],
        "served": [],
    }
    failed: list[str] = []

    def part(what: str, run: Callable[[], Any]) -> Any:
        """One part's failure is reported and the others still run: a GPU lease is short."""
        try:
            return run()
        except Exception:
            traceback.print_exc()
            failed.append(what)
            return []

    for model in args.models if "model" in args.parts else []:
        results["model_only"] += part(
            f"model only {model}", lambda m=model: model_only([m], device, variants, args.batches, args.iterations)
        )
        save(results, args.out)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if "preprocessing" in args.parts:
        results["preprocessing"] = part("preprocessing", lambda: preprocessing(device, dtype, args.iterations))
    for model in args.models if "served" in args.parts else []:
        results["served"] += part(
            f"served {model}",
            lambda m=model: served(m, device, variants[0][1], args.streams, args.frames, args.rounds),
        )
        save(results, args.out)
    return finish(results, args.out, failed)


def save(results: dict, out: Path) -> Path:
    """The JSON so far: written after each part, so a run its lease cuts short keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_fp16.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def finish(results: dict, out: Path, failed: list[str]) -> int:
    path = save(results, out)
    plot(results, out / "gpu_fp16.png")
    report(results)
    print(f"\nwrote {path} and {out / 'gpu_fp16.png'}")
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
