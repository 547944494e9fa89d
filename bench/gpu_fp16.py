"""CUDA fp16 (channels_last) vs fp32, CUDA graphs, and what batching across streams buys on a GPU.

    python bench/gpu_fp16.py --out bench/results/gpu          (bench/gpu_check.sh runs it)
    python bench/gpu_fp16.py --device cpu --tiny --out /tmp/g  (dry run of the same code on the CPU)
    python bench/gpu_fp16.py --from-log LOG --skip-rounds 1    (rebuild a run cut short from its progress lines)

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
import re
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
    from serve_bench import DaemonProcess  # bench/ is this script's folder
    from stream_clients import run_streams

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


def report(results: dict) -> None:
    print(f"\n{results['device']}  (torch {results['torch']})")
    if results["model_only"]:
        print("\nmodel only, median ms (images/s)")
    for r in results["model_only"]:
        ms, ips = r["median_ms"], r["images_per_s"]
        print(f"  {r['model']:<14}{r['precision']:<12} batch {r['batch']:>3}: {ms:8.2f} ({ips:.0f})")
    by = {(r["model"], r["precision"], r["batch"]): r for r in results["model_only"]}
    for (model, variant, b), r in by.items():
        for than in {"fp16": ["fp32"], "fp16+graphs": ["fp16", "fp32+graphs"], "fp32+graphs": ["fp32"]}.get(
            variant, []
        ):
            if (model, than, b) in by:
                ratio = r["images_per_s"] / by[(model, than, b)]["images_per_s"]
                print(f"  {model} batch {b}: {variant} / {than} throughput {ratio:.2f}x")
    for r in results["preprocessing"]:
        print(f"preprocessing a {r['jpeg']} JPEG on the {r['where']}: {r['median_ms']:.2f} ms")
    print("\nserved, aggregate frames/s (mean batch)")
    rows = {(r["model"], r["streams"], r["batching"]): r for r in results["served"]}
    for r in results["served"]:
        one = rows.get((r["model"], 1, r["batching"]))
        off = rows.get((r["model"], r["streams"], "off"))
        extra = f"  vs 1 stream {r['frames_per_s'] / one['frames_per_s']:.2f}x" if one else ""
        if r["batching"] != "off" and off:
            extra += f"  vs batching off {r['frames_per_s'] / off['frames_per_s']:.2f}x"
        # Rows rebuilt from a progress log (--from-log) lack some of these.
        detail = ", ".join(
            f.format(r[k])
            for k, f in (
                ("mean_batch", "batch {:.1f}"),
                ("inference_ms_p50", "model {:.2f} ms"),
                ("daemon_cores", "daemon {:.2f} cores"),
            )
            if k in r
        )
        detail = f" ({detail})" if detail else ""
        if "answered" in r:
            detail += f"  answered {r['answered']}/{r['sent']}"
        if any(len(split) > 1 for split in r.get("streams_per_worker", [])):
            detail += "  streams per worker " + ", ".join("/".join(map(str, s)) for s in r["streams_per_worker"])
        print(
            f"  {r['model']:<14}{r['precision']:<5} {r['streams']} streams, batching {r['batching']:<12}: "
            f"{r['frames_per_s']:7.0f} frames/s{detail}{extra}"
        )


def from_log(log: Path, skip_rounds: int) -> dict:
    """Rebuild the results from a run's progress lines (a run cut short by its lease leaves only those).

    Served throughput is the median of each setting's runs, leaving out the first
    ``skip_rounds`` rounds (cold daemons, in a run made before the warm-up run existed).
    Model time and answer counts are not in the progress lines.
    """
    results: dict[str, Any] = {"device": "?", "torch": "?", "model_only": [], "preprocessing": [], "served": []}
    info = log.with_name("gpu.txt")
    if info.exists():  # bench/gpu_check.sh writes it beside the log
        lines = info.read_text().splitlines()
        results["device"] = lines[1].split(",")[0]
        results["torch"] = lines[2].split()[2]
    runs: dict[tuple[str, str, int, str], list[float]] = {}
    model = precision = ""
    round_no = 0
    for line in log.read_text().splitlines():
        if m := re.match(r"\s+(\S+)\s+(\S+)\s+batch\s+(\d+):\s+([\d.]+) ms\s+(\d+) img/s", line):
            name, variant, b, ms, ips = m.groups()
            row = {"model": name, "precision": variant, "batch": int(b), "median_ms": float(ms)}
            results["model_only"].append(row | {"images_per_s": float(ips)})
        elif m := re.match(r"\s+preprocessing a (\S+) JPEG on the (\S+): ([\d.]+) ms", line):
            results["preprocessing"].append({"where": m[2], "jpeg": m[1], "median_ms": float(m[3])})
        elif m := re.match(r"served: starting edgeserver (\S+) (\S+) on", line):
            model, precision, round_no = m[1], m[2], 0
        elif re.match(r"\s+round \d+/\d+ done", line):
            round_no += 1
        elif (m := SERVED_LINE.match(line)) and round_no >= skip_rounds:
            runs.setdefault((model, precision, int(m[1]), m[2]), []).append(m.groups()[2:])
    if skip_rounds:
        results["note"] = f"served: rounds after the first {skip_rounds} (cold daemons, no warm-up run)"
    for (name, prec, n, batching), got in runs.items():
        row = {"model": name, "precision": prec, "streams": n, "batching": batching}
        fps = [float(g[0]) for g in got]
        row |= {"frames_per_s": statistics.median(fps), "runs_fps": fps}
        for i, key in enumerate(("daemon_cores", "client_cores", "mean_batch"), 1):
            if all(g[i] for g in got):  # older logs lack the CPU use, and the batch size
                row[key] = statistics.median(float(g[i]) for g in got)
        if all(g[4] for g in got):  # several workers, in logs that have the split
            row["streams_per_worker"] = [[int(k) for k in g[4].split("/")] for g in got]
        results["served"].append(row)
    return results


# "    4 streams, batching on+graphs x2: 1212 frames/s  (daemon 3.00 cores, clients 0.58, batch 6.1)
#     streams per worker 3/1"
SERVED_LINE = re.compile(
    r"\s+(\d+) streams, batching (.+?): (\d+) frames/s"
    r"(?:\s+\(daemon ([\d.]+) cores, clients ([\d.]+)(?:, batch ([\d.]+))?\))?"
    r"(?:\s+streams per worker ([\d/]+))?"
)


def plot(results: dict, path: Path) -> None:
    """Model only (images/s by batch size), served (frames/s by streams), and, with several workers, each
    run's frames/s against how unevenly the kernel spread the streams; a part that was not run is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spread = _worker_runs(results["served"])
    panels = [bool(results["model_only"]), bool(results["served"]), bool(spread)]
    fig, axes = plt.subplots(1, max(1, sum(panels)), figsize=(7 * max(1, sum(panels)), 6), squeeze=False)
    ax = iter(axes[0])
    if results["model_only"]:
        a = next(ax)
        for (model, precision), rows in _group(results["model_only"], "model", "precision").items():
            batch, ips = [r["batch"] for r in rows], [r["images_per_s"] for r in rows]
            a.plot(batch, ips, marker="o", label=f"{model} {precision}")
        batches = sorted({r["batch"] for r in results["model_only"]})
        a.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="model only, in process")
        a.set_xticks(batches, [str(x) for x in batches])
        a.legend(fontsize=8)
    if results["served"]:
        b = next(ax)
        for (model, batching), rows in _group(results["served"], "model", "batching").items():
            b.plot(
                [r["streams"] for r in rows],
                [r["frames_per_s"] for r in rows],
                marker="o",
                label=f"{model} batching {batching}",
            )
        title = "served over loopback gRPC (JPEG 640x480)"
        b.set(xlabel="concurrent streams", ylabel="aggregate frames/s", title=title)
        b.set_xticks(sorted({r["streams"] for r in results["served"]}))
        b.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    if spread:
        c = next(ax)
        for model, n in sorted({(m, n) for m, n, _, _ in spread}):
            pts = [(share, gain) for m, k, share, gain in spread if (m, k) == (model, n)]
            shares, gains = [x for x, _ in pts], [y for _, y in pts]
            marker = "os^D"[n.bit_length() % 4]  # one per streams count: 8 o, 1 s, 2 ^, 4 D
            c.scatter(shares, gains, marker=marker, label=f"{model}, {n} streams", alpha=0.8)
        c.axhline(1.0, color="grey", lw=0.8)
        c.set(
            xlabel="busiest worker's share of the streams (0.5: even)",
            ylabel="frames/s over one daemon's median",
            title="--workers 2: each run, as the kernel spread the connections",
        )
        c.legend(fontsize=7)
    note = f"; {results['note']}" if "note" in results else ""
    fig.suptitle(f"{results['device']}, torch {results['torch']}{note}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _worker_runs(served: list[dict]) -> list[tuple[str, int, float, float]]:
    """(model, streams, busiest worker's share, frames/s over the one-daemon setting's median) per run
    of a setting with several workers ("... x2"); rows need each run's frames/s and split."""
    one = {(r["model"], r["streams"], r["batching"]): r["frames_per_s"] for r in served}
    out = []
    for r in served:
        base = one.get((r["model"], r["streams"], r["batching"].removesuffix(" x2")))
        if not r["batching"].endswith(" x2") or not base or "runs_fps" not in r or "streams_per_worker" not in r:
            continue
        for fps, split in zip(r["runs_fps"], r["streams_per_worker"], strict=True):
            out.append((r["model"], r["streams"], max(split) / sum(split), fps / base))
    return out


def _group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


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
