"""serve_bench's table, ratios and plot, from its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.modes import LATENCY_MODES, SAME_HOST


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
            # The same comparison in ms per frame: what the frontend adds to each frame, whatever the
            # model takes (a faster model neither hides nor inflates it, as it does the ratio).
            overhead_ms = 1e3 / c["fps"] - 1e3 / b["fps"]
            added = lat["p50_ms"] - b_lat["p50_ms"]
            floor_ms = floor["stages_ms"]["overhead"]  # its latency minus the time it held the frame
            # The same difference with each frame's own model time taken out first (median of latency
            # minus inference, served and in process): the model's time swings most on this machine,
            # between chunks too, and it is the same work on both sides.
            added_wo_model = lat["stages_ms"]["overhead"] - b_lat["stages_ms"]["overhead"]
            summary[key] = {
                "served_over_limit": served_over_limit,
                "overhead_ms_per_frame": overhead_ms,
                "added_latency_p50_ms": added,
                "added_latency_model_time_out_ms": added_wo_model,
                "grpc_floor_p50_ms": floor_ms,
                "added_above_floor_ms": added - floor_ms,
                "grpc_floor_hot_p50_ms": hot["stages_ms"]["overhead"],
            }
            print(
                f"  {key:<22} served/limit throughput {served_over_limit:5.2f} "
                f"(overhead {overhead_ms:+.2f} ms/frame)   "
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
