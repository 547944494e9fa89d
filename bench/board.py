"""The board's daemon against the workstation's, side by side in one run (issue 27's targets).

    python -m bench.board                                   # squeezenet1_0 + resnet50, 3 rounds
    python -m bench.board --edge-venv .venv-edge            # the ONNX daemon from a venv with only [edge]
    python -m bench.board --models squeezenet1_0 --rounds 1 --frames 200 --out /tmp/b

Per model, int8 both ways, made here from the same fp32 model (random weights, seed 0: no
ImageNet weights can be downloaded here) and calibrated on the same real photos:
  torch        TorchScript int8 (edgequant's default), served by edgeserver --runtime torch
  onnxruntime  ONNX QDQ int8 (edgequant --format onnx), served by edgeserver --runtime onnxruntime,
               from --edge-venv when given (torch absent from that venv)
In rounds that alternate which runtime goes first: time to SERVING (the daemon's own line and from
process start), served frames/s with frames back to back on one stream (policy all), latency with
one frame in flight, RSS after the frames. Frames go as a robot's client sends camera frames (BGR
arrays; the client shrinks each to the square the model's crop keeps and encodes a JPEG).
Then the agreement of the two daemons' answers on the
same photo crops (top-1, top-5 overlap), the numpy preprocessing's mean |pixel difference| to
torchvision's on those frames, and the [edge] closure's installed size. Medians and min-max over
rounds. Writes board.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from bench.daemon import ROOT, DaemonProcess
from bench.stats import log, pct
from edgeinfer.client import EdgeClient

__all__ = ["main", "photo_frames"]

RUNTIMES = ("torch", "onnxruntime")
TARGETS = {  # issue 27: RSS (MB) after the frames, SERVING (s), served frames/s vs torch
    "squeezenet1_0": {"rss_mb": 150, "serving_s": 1.0, "fps_ratio": 1.0},
    "resnet50": {"rss_mb": 250, "fps_ratio": 0.95},
}
CLOSURE_MB = 250


def photos() -> list[np.ndarray]:
    """Real photos, BGR: scikit-learn's two and scikit-image's colour ones (both ship them in their wheels)."""
    from sklearn.datasets import load_sample_images

    out = [img[..., ::-1] for img in load_sample_images().images]
    try:
        from skimage import data
    except ImportError:
        log("scikit-image not installed: scikit-learn's two photos only (pip install scikit-image adds its seven)")
        return [np.ascontiguousarray(p) for p in out]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"):
        out.append(getattr(data, name)()[..., :3][..., ::-1])
    return [np.ascontiguousarray(p) for p in out]


def photo_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` crops of the photos: each its own zoom (1-2.5x), offset, mirroring and size (VGA to 720p)."""
    rng = np.random.default_rng(seed)
    images = photos()
    sizes = ((640, 480), (800, 600), (1280, 720), (480, 640))
    out = []
    for i in range(count):
        photo = images[i % len(images)]
        photo = photo[:, ::-1] if rng.uniform() < 0.5 else photo
        w, h = sizes[int(rng.integers(len(sizes)))]
        scale = max(w / photo.shape[1], h / photo.shape[0]) * rng.uniform(1.0, 2.5)
        big = cv2.resize(
            photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        )
        y, x = int((big.shape[0] - h) * rng.uniform()), int((big.shape[1] - w) * rng.uniform())
        out.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
    return out


def make_artifacts(models: list[str], repo: Path, calib: Path) -> dict[str, dict]:
    from edgeinfer.quant import quantize
    from edgeinfer.quant.onnx_export import make_onnx_artifact
    from edgeinfer.server import WeightsSource

    weights = WeightsSource("random", seed=0)
    made = {}
    for name in models:
        log(f"{name}: TorchScript int8 (fx) and ONNX int8 (QDQ), calibrated on {calib}")
        ts = quantize(name, calib=calib, out=repo, weights=weights, frames=64, latency_iterations=5)
        ox = make_onnx_artifact(name, calib=calib, out=repo, weights=weights, frames=64, latency_iterations=5)
        made[name] = {"torchscript": ts.meta["fidelity"], "onnx": ox.meta["fidelity"]}
    return made


def served(target: str, model: str, jpegs: list[np.ndarray]) -> tuple[float, list[list[int]]]:
    """Frames back to back (policy all): frames/s from the first answer on, and each frame's top-5."""
    answers: list[list[int]] = []
    with EdgeClient(target, timeout=120) as client:
        first = None
        for r in client.stream(jpegs, model, precision="int8", drop_policy="all", top_k=5):
            assert r.prediction is not None, r
            answers.append([c.index for c in r.prediction.classes])
            first = first or time.perf_counter()
        seconds = time.perf_counter() - (first or time.perf_counter())
    return (len(jpegs) - 1) / seconds if seconds > 0 else float("nan"), answers


def latency(target: str, model: str, jpegs: list[np.ndarray]) -> list[float]:
    """One frame in flight at a time: client-measured ms from handing the frame over to its answer."""
    answered = threading.Event()

    def one_at_a_time() -> Iterator[np.ndarray]:
        for f in jpegs:
            answered.clear()
            yield f
            answered.wait(30)

    out = []
    with EdgeClient(target, timeout=120) as client:
        for r in client.stream(one_at_a_time(), model, precision="int8", drop_policy="all"):
            answered.set()
            out.append(r.latency_ms or float("nan"))
    return out


def one_daemon(runtime: str, model: str, repo: Path, args: argparse.Namespace, jpegs: list[np.ndarray]) -> dict:
    launcher = [str(args.edge_venv / "bin" / "edgeserver")] if runtime == "onnxruntime" and args.edge_venv else None
    daemon = DaemonProcess(
        [f"{model}:int8"], repo, args.threads, None, 8, extra=("--runtime", runtime), launcher=launcher
    )
    try:
        said = next((line for line in daemon.output if "SERVING after" in line), "")
        serving_s = float(said.split("SERVING after")[1].split()[0]) if said else float("nan")
        target = f"127.0.0.1:{daemon.port}"
        fps, answers = served(target, model, jpegs)
        rss = daemon.rss_mb()
        lat = latency(target, model, jpegs[: args.latency_frames])
    finally:
        daemon.stop()
    return {
        "serving_s": serving_s,  # as the daemon reports it (after its imports)
        "startup_s": daemon.startup_s,  # from process start to health SERVING, as a supervisor sees it
        "fps": fps,
        "rss_mb": rss,
        "latency_p50_ms": pct(lat, 50),
        "latency_p90_ms": pct(lat, 90),
        "answers": answers,
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    top1 = statistics.fmean(x[0] == y[0] for x, y in zip(a, b, strict=True))
    top5 = statistics.fmean(len(set(x) & set(y)) / 5 for x, y in zip(a, b, strict=True))
    return {"frames": len(a), "top1_agreement": top1, "top5_overlap": top5}


def preprocessing_diff(model: str, jpegs: list[bytes]) -> dict[str, float]:
    """Mean |pixel difference| (grey levels of the 0-255 input) of the numpy path to torchvision's."""
    import torch

    from edgeinfer.server.frames import JpegImage
    from edgeinfer.server.preprocess import Preprocessor
    from edgeinfer.server.preprocess_numpy import NumpyPreprocessor
    from edgeinfer.server.registry import get_spec

    config = get_spec(model).preprocessing
    ours, theirs = NumpyPreprocessor(config), Preprocessor(config, device=torch.device("cpu"))
    scale = np.asarray(config.std, np.float32)[:, None, None] * 255
    means, worst = [], 0.0
    for data in jpegs:
        diff = np.abs(ours(JpegImage(data)).tensor - theirs(JpegImage(data)).tensor.numpy()) * scale
        means.append(float(diff.mean()))
        worst = max(worst, float(diff.max()))
    return {"frames": len(jpegs), "mean_abs_diff": statistics.fmean(means), "max_abs_diff": worst}


def edge_closure_mb(venv: Path) -> float:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6


def make_edge_venv(venv: Path) -> None:
    """A fresh venv with only edgeinfer[edge], from the package index (as tests/test_edge_install.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip"]
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, str(ROOT)], check=True)
        (wheel,) = Path(tmp).glob("edgeinfer-*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[edge]"], check=True)


def summary(runs: list[dict], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["squeezenet1_0", "resnet50"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=1000, help="frames per served run (resnet50: a third)")
    p.add_argument("--distinct", type=int, default=240, help="distinct photo crops among them (>= 200)")
    p.add_argument("--latency-frames", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--edge-venv", type=Path, default=None, help="serve ONNX from this venv (made if missing)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--repo", type=Path, default=None, help="keep the artifacts here (reused when present)")
    args = p.parse_args(argv)
    if args.edge_venv and not (args.edge_venv / "bin" / "edgeserver").exists():
        log(f"making {args.edge_venv} with only edgeinfer[edge]")
        make_edge_venv(args.edge_venv)
    crops = photo_frames(args.distinct)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in crops]
    result: dict = {"threads": args.threads, "rounds": args.rounds, "distinct_frames": len(jpegs), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        calib, repo = Path(tmp) / "calib", args.repo or Path(tmp) / "repo"
        calib.mkdir()
        for i, f in enumerate(photo_frames(64, seed=1)):  # other crops than the measured ones
            cv2.imwrite(str(calib / f"{i:03d}.jpg"), f)
        todo = [m for m in args.models if not (repo / m / "onnx-int8").is_dir() or not (repo / m / "int8-x86").is_dir()]
        result["artifacts"] = make_artifacts(todo, repo, calib)
        for model in args.models:
            n = args.frames if model != "resnet50" else max(args.distinct, args.frames // 3)
            frames = [crops[i % len(crops)] for i in range(n)]
            runs: dict[str, list[dict]] = {rt: [] for rt in RUNTIMES}
            for r in range(args.rounds):
                for rt in RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]:
                    log(f"{model} round {r + 1}/{args.rounds}: {rt}, {n} frames")
                    runs[rt].append(one_daemon(rt, model, repo, args, frames))
            row: dict = {}
            for rt, rs in runs.items():
                row[rt] = {k: summary(rs, k) for k in ("serving_s", "startup_s", "fps", "rss_mb", "latency_p50_ms")}
            row["fps_ratio"] = summary(
                [{"x": o["fps"] / t["fps"]} for o, t in zip(runs["onnxruntime"], runs["torch"], strict=True)], "x"
            )
            d = len(jpegs)
            row["agreement"] = agreement(runs["torch"][0]["answers"][:d], runs["onnxruntime"][0]["answers"][:d])
            row["preprocessing"] = preprocessing_diff(model, jpegs)
            result["models"][model] = row
    if args.edge_venv:
        result["edge_closure_mb"] = edge_closure_mb(args.edge_venv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "board.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    def cell(s: dict, fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

    print(f"threads {result['threads']}, {result['rounds']} rounds; medians (min-max)")
    for model, row in result["models"].items():
        t, o = row["torch"], row["onnxruntime"]
        target = TARGETS.get(model, {})
        print(f"\n{model} int8            torch (TorchScript)        onnxruntime (QDQ)          target")
        print(
            f"  RSS after frames MB  {cell(t['rss_mb'], '.0f'):26} {cell(o['rss_mb'], '.0f'):26} "
            f"{target.get('rss_mb', '')}"
        )
        print(
            f"  SERVING (daemon) s   {cell(t['serving_s'], '.2f'):26} {cell(o['serving_s'], '.2f'):26} "
            f"{target.get('serving_s', '')}"
        )
        print(f"  SERVING (process) s  {cell(t['startup_s'], '.2f'):26} {cell(o['startup_s'], '.2f'):26}")
        print(f"  served frames/s      {cell(t['fps'], '.1f'):26} {cell(o['fps'], '.1f'):26}")
        print(f"  onnxruntime / torch  {cell(row['fps_ratio'], '.2f'):53} {target.get('fps_ratio', '')}")
        print(f"  latency p50 ms       {cell(t['latency_p50_ms'], '.1f'):26} {cell(o['latency_p50_ms'], '.1f'):26}")
        a, pre = row["agreement"], row["preprocessing"]
        print(
            f"  agreement on {a['frames']} photo crops: top-1 {a['top1_agreement']:.3f}, top-5 overlap "
            f"{a['top5_overlap']:.3f}; preprocessing mean |diff| {pre['mean_abs_diff']:.4f} grey levels "
            f"(worst pixel {pre['max_abs_diff']:.2f})"
        )
    if "edge_closure_mb" in result:
        print(f"\n[edge] closure installed: {result['edge_closure_mb']:.0f} MB (target {CLOSURE_MB})")


if __name__ == "__main__":
    sys.exit(main())
