"""v2_vs_v1's table and plot, from its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOP_K = 5
UNARY = ("v1 classify", "v2 infer", "v2 infer probs")
STREAM = ("v1 stream", "v2 stream")


def report(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"\n{c['model']}: {c['rounds']} interleaved rounds, {c['frame_size']}px JPEG frames "
        f"(~{c['jpeg_bytes_median'] / 1024:.0f} KiB), top {c['top_k']}"
    )
    print(f"{'mode':<18}{'frames':>7}{'frames/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'daemon p50':>12}{'overhead p50':>14}")
    for name, r in result["modes"].items():
        print(
            f"{name:<18}{r['frames']:>7}{r['fps']:>10.1f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}"
            f"{r['server_p50_ms']:>12.2f}{r['overhead_p50_ms']:>14.2f}"
        )
    q = result["ratios"]
    print("ratios (v2 / v1):")
    added = q["unary_added_ms_v2_minus_v1"]
    print(f"  unary latency p50                    {q['unary_p50_v2_over_v1']:.2f}x ({added:+.2f} ms)")
    print(f"  unary latency p50, full probabilities {q['unary_probs_p50_v2_over_v1']:.2f}x")
    print(f"  unary daemon time p50                {q['unary_server_p50_v2_over_v1']:.2f}x")
    print(
        f"  unary overhead p50 (latency minus forward pass): v1 {q['unary_overhead_p50_ms_v1']:.2f} ms, "
        f"v2 {q['unary_overhead_p50_ms_v2']:.2f} ms, v2 probabilities {q['unary_overhead_p50_ms_v2_probs']:.2f} ms"
    )
    print(f"  one stream frames/s                  {q['stream_fps_v2_over_v1']:.2f}x")
    print(f"  {c['streams']} streams frames/s                {q['streams_fps_v2_over_v1']:.2f}x")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    n = result["config"]["streams"]
    fig, (lat, fps) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(UNARY)
    p50 = [modes[m]["p50_ms"] for m in names]
    server = [modes[m]["server_p50_ms"] for m in names]
    x = np.arange(len(names))
    lat.bar(x - 0.2, p50, 0.4, label="client p50", color=["#4C72B0", "#DD8452", "#C44E52"])
    lat.bar(x + 0.2, server, 0.4, label="daemon p50", color="#999999")
    lat.set_xticks(x, names)
    lat.set_ylabel("ms per request (one in flight)")
    lat.set_title("unary latency")
    lat.legend()
    groups = [("1 stream", "v1 stream", "v2 stream"), (f"{n} streams", f"v1 {n} streams", f"v2 {n} streams")]
    x = np.arange(len(groups))
    for offset, proto, color in ((-0.2, 1, "#4C72B0"), (0.2, 2, "#DD8452")):
        values = [modes[g[proto]]["fps"] for g in groups]
        fps.bar(x + offset, values, 0.4, label=f"v{proto}", color=color)
        for xi, name in zip(x, (g[proto] for g in groups), strict=True):  # each round's rate, to see the spread
            rounds = modes[name]["fps_rounds"]
            fps.scatter([xi + offset] * len(rounds), rounds, color="black", s=8, zorder=3)
    fps.set_xticks(x, [g[0] for g in groups])
    fps.set_ylabel("frames/s (median of rounds; dots: each round)")
    fps.set_title("stream throughput")
    fps.legend()
    fig.suptitle(f"KServe v2 vs edgeinfer.v1, {result['config']['model']}, same daemon and frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
