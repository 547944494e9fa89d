"""Does the daemon's memory come back after streams end? Rounds of big-frame streams, RSS after each.

    python -m bench.memory_rounds                                # the daemon as it ships, and without its arena cap
    python -m bench.memory_rounds --rounds 1 --streams 4 --settle-s 0.5 --out /tmp/m   # the test suite's

Per variant, a fresh ``edgeserver`` (SqueezeNet, seeded random weights, loopback) is
warmed up with two small frames of each encoding, and its RSS read: the *baseline*.
Then ``--rounds`` rounds of ``--streams`` streams at once, each sending four raw
frames of 640x480 to 1920x1080 (up to 6 MB) under both drop policies; every third
stream walks away after its first answer (cancelled). After each round the bench
waits until the daemon has had time to trim its heap (server/stream_guard.py trims
at most every TRIM_EVERY_S after streams end) and reads RSS again.

Variants: ``shipped`` (the daemon caps glibc's malloc arenas, server/memory.py) and
``uncapped`` (MALLOC_ARENA_MAX=16, glibc's default on 2 cores: 8 per core); more with
``--variant NAME:ENV=VALUE``. Prints RSS per round over the baseline, writes
memory_rounds.json and memory_rounds.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.daemon import DaemonProcess
from bench.stats import log
from edgeinfer.client import EdgeClient
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server.stream_guard import TRIM_EVERY_S

SIZES = ((1080, 1920), (720, 1280), (1000, 1000), (480, 640))
FRAMES_PER_STREAM = 4


def one_stream(target: str, i: int, image: pb.Image, counts: dict[str, int], lock: threading.Lock) -> None:
    policy = pb.DROP_POLICY_ALL if i % 2 else pb.DROP_POLICY_LATEST
    config = pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=policy)
    requests = [pb.StreamRequest(config=config)]
    requests += [pb.StreamRequest(frame=pb.Frame(sequence=k, image=image)) for k in range(FRAMES_PER_STREAM)]
    answers, outcome = 0, "OK"
    with grpc.insecure_channel(target) as ch:
        call = pb_grpc.EdgeInferenceStub(ch).StreamClassify(iter(requests), timeout=120)
        try:
            for _ in call:
                answers += 1
                if i % 3 == 0:  # walks away after its first answer
                    call.cancel()
                    outcome = "CANCELLED"
                    break
        except grpc.RpcError as exc:
            outcome = exc.code().name  # type: ignore[union-attr]
    with lock:
        counts[outcome] = counts.get(outcome, 0) + 1
        counts["answers"] = counts.get("answers", 0) + answers


def run_variant(name: str, env: dict[str, str], rounds: int, streams: int, settle_s: float) -> dict:
    daemon = DaemonProcess(
        ["squeezenet"],
        Path(tempfile.mkdtemp(prefix="memrounds-")),
        2,
        None,
        8,
        ("--max-streams", str(streams + 4)),
        env,
    )
    target = f"127.0.0.1:{daemon.port}"
    counts: dict[str, int] = {}
    lock = threading.Lock()
    try:
        with EdgeClient(target, timeout=60) as c:
            for encoding in ("jpeg", "raw"):
                list(c.stream([np.zeros((480, 640, 3), np.uint8)] * 2, encoding=encoding, drop_policy="all"))
        time.sleep(settle_s)
        baseline = daemon.rss_mb()
        after = []
        for r in range(rounds):
            threads = []
            for i in range(streams):
                h, w = SIZES[(i + r) % len(SIZES)]
                image = pb.Image(raw=pb.RawImage(height=h, width=w, data=bytes(h * w * 3)))
                threads.append(threading.Thread(target=one_stream, args=(target, i, image, counts, lock)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            time.sleep(settle_s)
            after.append(daemon.rss_mb())
            log(f"{name}: round {r + 1}/{rounds}: RSS {after[-1]:.0f} MB (baseline {baseline:.0f} MB)")
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
    return {
        "env": env,
        "baseline_mb": baseline,
        "after_round_mb": after,
        "end_over_baseline_pct": (after[-1] - baseline) / baseline * 100,
        "peak_over_baseline_pct": (max(after) - baseline) / baseline * 100,
        "streams": counts,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--streams", type=int, default=20, help="streams at once per round")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE", help="another daemon env")
    p.add_argument("--settle-s", type=float, help="wait after a round before reading RSS (default: two trim periods)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    variants = {"shipped": {}, "uncapped": {"MALLOC_ARENA_MAX": "16"}}
    for v in args.variant:
        name, _, kv = v.partition(":")
        variants[name] = dict([kv.split("=", 1)])
    # a trim is due at most TRIM_EVERY_S after the last stream ended
    settle_s = 2 * TRIM_EVERY_S + 2 if args.settle_s is None else args.settle_s
    result = {
        "rounds": args.rounds,
        "streams_per_round": args.streams,
        "frames_per_stream": FRAMES_PER_STREAM,
        "settle_s": settle_s,
        "variants": {
            name: run_variant(name, env, args.rounds, args.streams, settle_s) for name, env in variants.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_rounds.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, v in result["variants"].items():
        rounds = " ".join(f"{mb:.0f}" for mb in v["after_round_mb"])
        print(
            f"{name:>10}: baseline {v['baseline_mb']:.0f} MB; after each round {rounds} MB; "
            f"end {v['end_over_baseline_pct']:+.1f}%, peak {v['peak_over_baseline_pct']:+.1f}% over baseline"
        )
    plot(result, args.out / "memory_rounds.png")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in result["variants"].items():
        ax.plot(range(len(v["after_round_mb"]) + 1), [v["baseline_mb"], *v["after_round_mb"]], marker="o", label=name)
    ax.set_xlabel("round (0: baseline, after warm-up)")
    ax.set_ylabel(f"daemon RSS, MB ({result['settle_s']:.0f} s after the round)")
    ax.set_title(f"{result['streams_per_round']} big-frame streams per round, a third abandoned")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
