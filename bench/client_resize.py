"""Client-side resize: what shrinking frames on the client saves, on real photos. One run, interleaved.

    python -m bench.client_resize                       # 640x480, 1280x720, 1920x1080; about 2-3 minutes
    python -m bench.client_resize --tiny --out /tmp/b   # what the test suite runs

Frames: the two photos scikit-learn ships (china.jpg, flower.jpg, 640x427; no download),
scaled up (bicubic) and cropped to each size, four crops each: real photo content at
camera sizes, though smoother than a real 1080p sensor (it compresses better).
They go as a camera's BGR arrays: the client JPEG-encodes them (quality 90).

Per size, in rounds that alternate the modes so the machine's noise hits all alike:
  limit   naive in-process limit: full-size JPEG decode + resize/crop/normalize +
          int8 SqueezeNet 1.0 + top-k, one frame after another in this process
  auto    through an edgeserver process over loopback gRPC (same 2 cores as this client), one stream, client-side
          resize on (each frame's part the daemon's center crop keeps, shrunk to the daemon's resize
          size with area interpolation: a 256x256 square for SqueezeNet)
  off     the same with client-side resize off (full-size JPEGs on the wire)
For auto and off: served frames/s (back to back, policy all), latency with one frame
in flight, bytes per frame on the wire, the daemon's CPU time per frame (from /proc;
it includes OpenMP threads spinning between frames) and its work per frame (decode +
preprocess + model, its own timings). Then, on --agreement-frames distinct crops per size, the
top-1 / top-5 agreement between the two paths, against the int8 quantizer's own agreement with
fp32 on those same crops (in process). Writes client_resize.json and client_resize.png.

    --daemon-threads 1                   the daemon's model on one core, streams decoding beside it
    --daemon-arg=--x=y, --daemon-env K=V  any other daemon setting, --sizes 1280x720  one size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.daemon import DaemonProcess
from bench.modes import InProcess
from bench.serve_bench import ensure_int8
from bench.stats import Samples, log, pct
from edgeinfer.client import EdgeClient, FrameResult
from edgeinfer.media.images import shrink

ROOT = Path(__file__).resolve().parents[1]

MODEL = "squeezenet1_0"
SIZES = ((640, 480), (1280, 720), (1920, 1080))
MODES = ("limit", "auto", "off")
QUALITY = 90


def photos() -> list[np.ndarray]:
    """scikit-learn's sample photos (in its wheel), BGR."""
    from sklearn.datasets import load_sample_images

    return [np.ascontiguousarray(img[..., ::-1]) for img in load_sample_images().images]


def frames_at(size: tuple[int, int], count: int, seed: int | None = None) -> list[np.ndarray]:
    """``count`` crops of the photos scaled up to cover ``size`` (w, h).

    Without ``seed``: four zooms and three offsets per photo, in turn (the timed frames). With one:
    every crop its own zoom (1-2x), offset and mirroring (the frames the two paths' answers are compared on).
    """
    w, h = size
    rng = None if seed is None else np.random.default_rng(seed)
    images = photos()  # decoded once, not once per crop
    out = []
    for i in range(count):
        photo = images[i % 2]
        if rng is None:
            zoom, fy, fx = (1.0, 1.15, 1.3, 1.5)[(i // 2) % 4], ((i // 2) % 3) / 2, ((i // 2 + 1) % 3) / 2
        else:
            zoom, fy, fx = rng.uniform(1.0, 2.0), rng.uniform(), rng.uniform()
            photo = photo[:, ::-1] if rng.uniform() < 0.5 else photo
        scale = max(w / photo.shape[1], h / photo.shape[0]) * zoom
        big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        y, x = int((big.shape[0] - h) * fy), int((big.shape[1] - w) * fx)
        out.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
    return out


def jpeg(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok
    return buf.tobytes()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def served(target: str, frames: list[np.ndarray], resize: str, pid: int) -> tuple[Samples, float, list[FrameResult]]:
    """Frames back to back (policy all): frames/s from the first answer on, the daemon's CPU s per frame."""
    s = Samples()
    results = []
    cpu0 = cpu_seconds(pid)
    with EdgeClient(target, timeout=60) as client:
        first = None
        for r in client.stream(frames, MODEL, precision="int8", drop_policy="all", resize=resize, quality=QUALITY):
            assert r.prediction is not None, r
            results.append(r)
            if first is None:
                first = time.perf_counter()
            else:
                s.frames += 1
        s.seconds = time.perf_counter() - (first or time.perf_counter())
    cpu = (cpu_seconds(pid) - cpu0) / len(frames)
    return s, cpu, results


def latency(target: str, frames: list[np.ndarray], resize: str) -> list[float]:
    """One frame in flight at a time: client-measured ms from handing the frame over to its answer."""
    answered = threading.Event()

    def one_at_a_time() -> Iterator[np.ndarray]:
        for f in frames:
            answered.clear()
            yield f
            answered.wait(30)

    out = []
    with EdgeClient(target, timeout=60) as client:
        for r in client.stream(one_at_a_time(), MODEL, precision="int8", drop_policy="all", resize=resize):
            answered.set()
            out.append(r.latency_ms or float("nan"))
    return out


def _work_ms(r: FrameResult) -> float:
    """What the daemon did for the frame: decode + resize/crop/normalize + model (its own timings).

    /proc's CPU time also counts the inference threads spinning while they wait for the next frame
    (OpenMP's wait policy), which grows with how slowly the client sends; this does not.
    """
    t = r.prediction.timings  # type: ignore[union-attr]
    return t.decode_ms + t.preprocess_ms + t.inference_ms


def classes(results: list[FrameResult]) -> list[list[int]]:
    return [[c.index for c in r.prediction.classes] for r in results]  # type: ignore[union-attr]


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """Top-1 agreement and mean top-5 overlap of two paths' ranked classes on the same frames."""
    top1 = [x[0] == y[0] for x, y in zip(a, b, strict=True)]
    top5 = [len(set(x[:5]) & set(y[:5])) / 5 for x, y in zip(a, b, strict=True)]
    return float(np.mean(top1)), float(np.mean(top5))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16, help="frames per round per mode (throughput)")
    p.add_argument("--latency-frames", type=int, default=6, help="frames per round per mode, one in flight")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument(
        "--agreement-frames", type=int, default=96, help="distinct frames per size the answers are compared on"
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, daemon and in-process alike")
    p.add_argument("--daemon-threads", type=int, help="the daemon's --threads (default: --threads)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="NAME=VALUE", help="daemon's environment")
    p.add_argument("--daemon-arg", action="append", default=[], help="an edgeserver argument (--daemon-arg=--x=y)")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES), help="frame sizes, WxH,...")
    p.add_argument("--repository", type=Path, default=ROOT / "bench" / "results" / "model-repo")
    p.add_argument("--tiny", action="store_true", help="a few frames of everything (the test suite)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    if args.tiny:
        args.frames, args.latency_frames, args.rounds, args.agreement_frames = 4, 2, 1, 4
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_int8([MODEL], args.repository, args.tiny)

    inproc = InProcess(MODEL, "int8", args.repository)
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    env = dict(kv.split("=", 1) for kv in args.daemon_env)
    daemon = DaemonProcess(
        [f"{MODEL}:int8"],
        args.repository,
        args.daemon_threads or args.threads,
        None,
        max_batch=1,
        extra=tuple(args.daemon_arg),
        env=env,
    )
    target = f"127.0.0.1:{daemon.port}"
    try:
        with EdgeClient(target) as c:
            info = c.model(MODEL, precision="int8")
        fit = info.fit
        sets = {size: frames_at(size, args.frames) for size in sizes}
        jpegs = {size: [jpeg(f) for f in frames] for size, frames in sets.items()}
        data: dict[str, dict[str, Any]] = {
            f"{w}x{h}": {m: {"fps": [], "latency_ms": [], "cpu_ms": [], "work_ms": []} for m in MODES} for w, h in sizes
        }
        started = time.perf_counter()
        for rnd in range(args.rounds):
            for i, size in enumerate(sizes):
                key = f"{size[0]}x{size[1]}"
                modes = MODES[(rnd + i) % 3 :] + MODES[: (rnd + i) % 3]  # rotate: no mode always first
                for mode in modes:
                    d = data[key][mode]
                    if mode == "limit":
                        s = Samples()
                        inproc.limit(jpegs[size], s)
                        d["fps"].append(s.fps)
                        d["latency_ms"] += s.latencies_ms[: args.latency_frames]
                        continue
                    s, cpu, results = served(target, sets[size], mode, daemon.proc.pid)
                    d["fps"].append(s.fps)
                    d["cpu_ms"].append(cpu * 1e3)
                    d["work_ms"] += [_work_ms(r) for r in results]
                    d["latency_ms"] += latency(target, sets[size][: args.latency_frames], mode)
                log(f"round {rnd + 1}/{args.rounds} {key}: {time.perf_counter() - started:.0f} s")
        # Answers on distinct frames: the two served paths, and int8 against fp32 in process (the
        # quantizer's own agreement on these same frames, which the client's resize must stay within).
        fp32 = InProcess(MODEL, "fp32", args.repository)
        answers = {}
        for size in sizes:
            distinct = frames_at(size, args.agreement_frames, seed=1)
            full = [jpeg(f) for f in distinct]
            answers[f"{size[0]}x{size[1]}"] = {
                **{m: classes(served(target, distinct, m, daemon.proc.pid)[2]) for m in ("auto", "off")},
                "int8": inproc.top5(full),
                "fp32": fp32.top5(full),
            }
        fp32.stop()
    finally:
        daemon.stop()
        inproc.stop()

    rows = []
    summary: dict[str, dict[str, float]] = {}
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        wire = {
            "auto": statistics.median(len(jpeg(shrink(f, *fit))) for f in sets[size]),
            "off": statistics.median(len(j) for j in jpegs[size]),
            "limit": statistics.median(len(j) for j in jpegs[size]),
        }
        for mode in MODES:
            d = data[key][mode]
            rows.append(
                {
                    "size": key,
                    "mode": mode,
                    "fps": statistics.median(d["fps"]),
                    "p50_ms": pct(d["latency_ms"], 50),
                    "p95_ms": pct(d["latency_ms"], 95),
                    "bytes_per_frame": wire[mode],
                    "daemon_cpu_ms_per_frame": statistics.median(d["cpu_ms"]) if d["cpu_ms"] else None,
                    "daemon_work_ms_per_frame": statistics.median(d["work_ms"]) if d["work_ms"] else None,
                }
            )
        by = {r["mode"]: r for r in rows if r["size"] == key}
        top1, top5 = agreement(answers[key]["auto"], answers[key]["off"])
        q_top1, q_top5 = agreement(answers[key]["int8"], answers[key]["fp32"])
        summary[key] = {
            "served_auto_over_limit_fps": by["auto"]["fps"] / by["limit"]["fps"],
            "served_off_over_limit_fps": by["off"]["fps"] / by["limit"]["fps"],
            "auto_over_off_fps": by["auto"]["fps"] / by["off"]["fps"],
            "bytes_off_over_auto": by["off"]["bytes_per_frame"] / by["auto"]["bytes_per_frame"],
            "daemon_cpu_off_over_auto": by["off"]["daemon_cpu_ms_per_frame"] / by["auto"]["daemon_cpu_ms_per_frame"],
            "daemon_work_off_over_auto": by["off"]["daemon_work_ms_per_frame"] / by["auto"]["daemon_work_ms_per_frame"],
            "latency_p50_auto_minus_off_ms": by["auto"]["p50_ms"] - by["off"]["p50_ms"],
            "top1_agreement_auto_vs_off": top1,
            "top5_overlap_auto_vs_off": top5,
            "top1_agreement_int8_vs_fp32": q_top1,
            "top5_overlap_int8_vs_fp32": q_top5,
            "frames_compared": len(answers[key]["auto"]),
        }
    fidelity = info.fidelity
    result = {
        "model": f"{MODEL} int8 (random weights, seed 0; synthetic calibration)",
        "resize_size": fit.resize_size,
        "crop_size": fit.crop_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "frames_per_round": args.frames,
        "photos": "scikit-learn sample images china.jpg, flower.jpg (640x427), scaled up and cropped",
        "quantizer_fidelity": None
        if fidelity is None
        else {"top1_agreement": fidelity.top1_agreement, "top5_overlap": fidelity.top5_overlap},
        "rows": rows,
        "summary": summary,
    }
    (args.out / "client_resize.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    plot(result, args.out / "client_resize.png")
    return 0


def print_table(result: dict) -> None:
    print(
        f"{'size':>10} {'mode':>6} {'frames/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'bytes/frame':>12} "
        f"{'daemon CPU':>10} {'daemon work':>11}"
    )
    for r in result["rows"]:
        cpu, work = r["daemon_cpu_ms_per_frame"], r["daemon_work_ms_per_frame"]
        print(
            f"{r['size']:>10} {r['mode']:>6} {r['fps']:9.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
            f"{r['bytes_per_frame']:12.0f} {'' if cpu is None else f'{cpu:7.2f} ms'} "
            f"{'' if work is None else f'{work:8.2f} ms'}"
        )
    print("ratios (medians of interleaved rounds)")
    for size, s in result["summary"].items():
        print(
            f"  {size}: served auto/limit {s['served_auto_over_limit_fps']:.2f}x, off/limit "
            f"{s['served_off_over_limit_fps']:.2f}x; bytes off/auto {s['bytes_off_over_auto']:.1f}x; daemon CPU "
            f"off/auto {s['daemon_cpu_off_over_auto']:.2f}x, work off/auto {s['daemon_work_off_over_auto']:.2f}x; "
            f"top-1 agreement {s['top1_agreement_auto_vs_off']:.3f}, "
            f"top-5 overlap {s['top5_overlap_auto_vs_off']:.3f} (int8 vs fp32 on the same frames: "
            f"{s['top1_agreement_int8_vs_fp32']:.3f}, {s['top5_overlap_int8_vs_fp32']:.3f}; "
            f"{s['frames_compared']} frames)"
        )
    if result["quantizer_fidelity"]:
        f = result["quantizer_fidelity"]
        print(
            f"  int8 quantizer vs fp32 (its artifact's own figure): top-1 {f['top1_agreement']:.3f}, "
            f"top-5 overlap {f['top5_overlap']:.3f}"
        )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["summary"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.27
    for j, (metric, title, modes) in enumerate(
        [
            ("fps", "frames/s (limit: naive in-process)", MODES),
            ("bytes_per_frame", "bytes per frame on the wire", ("auto", "off")),
            ("daemon_work_ms_per_frame", "daemon work ms/frame (decode+prep+model)", ("auto", "off")),
        ]
    ):
        ax = axes[j]
        for k, mode in enumerate(modes):
            values = [next(r[metric] for r in result["rows"] if r["size"] == s and r["mode"] == mode) for s in sizes]
            ax.bar(np.arange(len(sizes)) + (k - (len(modes) - 1) / 2) * width, values, width, label=mode)
        ax.set_xticks(np.arange(len(sizes)), sizes)
        ax.set_title(title)
        if metric == "bytes_per_frame":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"client-side resize, {result['model']}, {result['threads']} threads; medians of {result['rounds']} rounds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
