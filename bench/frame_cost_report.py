"""frame_cost's results: the ratios from its chunks, the table and the plot."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench.thread_cpu import CATEGORIES


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def print_table(results: dict) -> None:
    lim = results["limit"]
    print(f"\nin-process limit {lim['ms_per_frame']:.2f} ms/frame, latency p50 {lim['latency_p50_ms']:.2f} ms")
    lim_cpu = sum(lim["cpu_ms_per_frame"].values())
    print(f"in-process limit CPU {lim_cpu:.2f} ms/frame (all of this process's threads)")
    print(
        f"{'variant':<8}{'served/limit':>13}{'(chunk med)':>12}{'overhead ms/fr':>15}{'added lat p50':>15}"
        f"{'CPU overhead ms/fr':>20}  env/ref"
    )
    for label, v in results["variants"].items():
        print(
            f"{label:<8}{v['served_over_limit']:>13.3f}{v['served_over_limit_chunk_median']:>12.3f}"
            f"{v['overhead_ms_per_frame']:>15.3f}{v['added_latency_p50_ms']:>15.3f}"
            f"{v['cpu_overhead_ms_per_frame']:>20.3f}  {v['env']} {v['daemon_args']} {v['ref']}"
        )
    cl = results["client_library"]
    stages = " ".join(f"{k}={v:.3f}" for k, v in cl["stages_ms"].items())
    print(f"client library per frame (in-process stub): {cl['per_frame_ms']:.3f} ms ({stages})")
    for kind, f in results["grpc_floor"].items():
        print(
            f"client + gRPC to a bare server answering at once ({kind}): {f['ms_per_frame']:.3f} ms/frame, "
            f"one in flight p50 {f['latency_p50_ms']:.3f} ms"
        )
    for u in results["uptime"][:1] + results["uptime"][-1:]:
        print(f"uptime: {u}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = {k: v for k, v in results.get("profile", {}).items() if isinstance(v, dict) and v}
    ncols = 2 + len(profile)
    fig, axes = plt.subplots(1, ncols, figsize=(12 + 6 * len(profile), 5.5), squeeze=False)
    cpu_by_thread(results, axes[0][1])
    ax = axes[0][0]
    # Per frame, back to back: what each stage takes, and the rest (gRPC, hand-offs, the client).
    bars: dict[str, dict[str, float]] = {}
    lim = results["limit"]
    bars["limit (in process)"] = {k: lim["stages_ms"][k] for k in ("decode", "preprocess", "inference")}
    bars["limit (in process)"]["rest"] = lim["ms_per_frame"] - sum(bars["limit (in process)"].values())
    for label, v in results["variants"].items():
        s = v["served_stages_ms"]
        b = {"decode": s["decode"], "preprocess": s["preprocess"], "inference": s["inference_per_frame"]}
        b["rest"] = v["served_ms_per_frame"] - sum(b.values())
        bars[f"served {label}"] = b
    cl = results["client_library"]
    bars["client library\n(stub, no gRPC)"] = dict(cl["stages_ms"])
    for kind, f in results["grpc_floor"].items():
        bars[f"client + gRPC\nbare {kind}"] = {"rest": f["ms_per_frame"]}
    stages = list(dict.fromkeys(k for b in bars.values() for k in b))
    for i, b in enumerate(bars.values()):
        bottom = 0.0
        for j, stage in enumerate(stages):
            val = max(0.0, b.get(stage, 0.0))
            ax.bar(
                i,
                val,
                bottom=bottom,
                color=f"C{j}",
                label=stage if stage not in ax.get_legend_handles_labels()[1] else None,
            )
            bottom += val
    ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax.set_ylabel("ms per frame (back to back, medians)")
    ax.set_title("where a frame's time goes")
    ax.legend(fontsize=7)
    for k, (side, threads) in enumerate(profile.items(), start=2):
        ax = axes[0][k]
        cats = [name for name, _ in CATEGORIES] + ["python (other)"]  # one color per category in every panel
        names = sorted(threads, key=lambda t: -sum(threads[t].values()))[:10]
        for i, t in enumerate(names):
            bottom = 0.0
            total = sum(threads[t].values())
            for j, c in enumerate(cats):
                val = threads[t].get(c, 0) / total if total else 0
                ax.bar(i, val, bottom=bottom, color=f"C{j}", label=c if i == 0 else None)
                bottom += val
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("share of the thread's py-spy samples")
        ax.set_title(f"py-spy per thread: {side}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cpu_by_thread(results: dict, ax: Any) -> None:  # a matplotlib Axes
    """Each variant's daemon and client: CPU ms per served frame, stacked by thread."""
    bars = {
        f"{label} {side}": t for label, v in results["variants"].items() for side, t in v["cpu_ms_per_frame"].items()
    }
    threads = list(dict.fromkeys(k for t in bars.values() for k in t))
    seen: set[str] = set()
    for i, t in enumerate(bars.values()):
        bottom = 0.0
        for j, name in enumerate(threads):
            val = t.get(name, 0.0)
            ax.bar(
                i,
                val,
                bottom=bottom,
                color=f"C{j % 10}",
                hatch="//" if j >= 10 else None,
                label=None if name in seen else name,
            )
            bottom += val
            seen.add(name)
    ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax.set_ylabel("CPU ms per served frame (/proc schedstat)")
    ax.set_title("CPU per frame, by thread (all threads, native ones too)")
    ax.legend(fontsize=6)


def served_ratios(limit: list[dict], served: list[dict]) -> dict:
    """Ratios of one variant's served chunks against the limit's chunks they alternated with.

    Both the pooled figure (all frames over all seconds, each side) and the median of the
    per-chunk ratios (each served chunk against the limit chunk next to it) are kept: the
    second is what a burst of load on the shared machine moves least.
    """
    lim_ms = sum(c["seconds"] for c in limit) * 1e3 / sum(c["frames"] for c in limit)
    srv_ms = sum(c["seconds"] for c in served) * 1e3 / sum(c["frames"] for c in served)
    pairs = [(lc["seconds"] / lc["frames"], sc["seconds"] / sc["frames"]) for lc, sc in zip(limit, served, strict=True)]
    return {
        "limit_ms_per_frame": lim_ms,
        "served_ms_per_frame": srv_ms,
        "served_over_limit": lim_ms / srv_ms,
        "overhead_ms_per_frame": srv_ms - lim_ms,
        "served_over_limit_chunk_median": statistics.median(lm / sm for lm, sm in pairs),
        "overhead_ms_per_frame_chunk_median": statistics.median((sm - lm) * 1e3 for lm, sm in pairs),
        "chunks": len(pairs),
    }


def _median_stages(chunks: list[dict]) -> dict[str, float]:
    keys = chunks[0]["stages"].keys()
    return {k: statistics.median(v for c in chunks for v in c["stages"][k]) for k in keys}


def _cost_summary(cost: list[dict]) -> dict:
    # The fastest of the repeats (timeit's advice): on a shared machine the others only add preemption.
    best = min(cost, key=lambda c: c["per_frame_ms"])
    return {
        "per_frame_ms": best["per_frame_ms"],
        "stages_ms": best["stages_ms"],
        "repeats_ms": [c["per_frame_ms"] for c in cost],
        "frames": sum(c["frames"] for c in cost),
    }
