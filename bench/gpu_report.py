"""gpu_fp16's table, ratios and plot, and its results rebuilt from a progress log (a run cut short)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any


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

    spread = worker_runs(results["served"])
    panels = [bool(results["model_only"]), bool(results["served"]), bool(spread)]
    fig, axes = plt.subplots(1, max(1, sum(panels)), figsize=(7 * max(1, sum(panels)), 6), squeeze=False)
    ax = iter(axes[0])
    if results["model_only"]:
        a = next(ax)
        for (model, precision), rows in group(results["model_only"], "model", "precision").items():
            batch, ips = [r["batch"] for r in rows], [r["images_per_s"] for r in rows]
            a.plot(batch, ips, marker="o", label=f"{model} {precision}")
        batches = sorted({r["batch"] for r in results["model_only"]})
        a.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="model only, in process")
        a.set_xticks(batches, [str(x) for x in batches])
        a.legend(fontsize=8)
    if results["served"]:
        b = next(ax)
        for (model, batching), rows in group(results["served"], "model", "batching").items():
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


def worker_runs(served: list[dict]) -> list[tuple[str, int, float, float]]:
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


def group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out
