"""fp32 vs int8 (fx) vs int8 (pt2e) per model: batch-1 latency, interleaved, and SQNR.

    python -m bench.quant_flows --models squeezenet1_0 resnet50 --out bench/results

The numbers behind DEFAULT_FLOW in quant/quantize.py. Weights are seeded random
(speed does not depend on them). All variants of one model run in one loop,
alternating every iteration, so the machine's noise hits them alike. Prints a
table of medians and ratios and writes quant_flows.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeinfer.quant.fidelity import interleaved_latency, logits, sqnr_db
from edgeinfer.quant.flows import quantize_fx, quantize_pt2e
from edgeinfer.quant.quantize import prepare_for_int8
from edgeinfer.server.artifacts import default_engine
from edgeinfer.server.registry import get_spec
from edgeinfer.server.weights import WeightsSource, build_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["squeezenet1_0", "resnet50"])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-pt2e", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    engine = default_engine()
    rows = []
    for name in args.models:
        spec = get_spec(name)
        fp32 = build_model(spec, WeightsSource("random", seed=0))
        model, pre = prepare_for_int8(spec, copy.deepcopy(fp32))
        size = pre.crop_size
        calib = [torch.randn(4, 3, size, size) for _ in range(4)]
        test = torch.randn(8, 3, size, size)
        variants = {"fp32": fp32}
        build = {}
        t = time.perf_counter()
        variants["int8-fx"] = quantize_fx(copy.deepcopy(model), calib, engine=engine, example=calib[0][:1])
        build["int8-fx"] = time.perf_counter() - t
        if not args.skip_pt2e:
            t = time.perf_counter()
            print(f"{name}: compiling the pt2e package (AOTInductor, can take minutes)", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                path = quantize_pt2e(
                    copy.deepcopy(model), calib, engine=engine, example=calib[0][:1], package_path=Path(tmp) / "m.pt2"
                )
                variants["int8-pt2e"] = torch._inductor.aoti_load_package(str(path))
            build["int8-pt2e"] = time.perf_counter() - t
        # `model` is the prepared fp32 copy (Inception's input transform folded), so the
        # int8 variants are compared on the inputs they expect.
        reference = logits(model, test)
        done = [0]

        def step(done: list[int] = done, name: str = name) -> None:
            done[0] += 1
            print(f"\r{name}: latency {done[0]}/{args.iterations}", end="", file=sys.stderr, flush=True)

        medians = interleaved_latency(variants, test[:1], iterations=args.iterations, on_step=step)
        print(file=sys.stderr)
        for variant, ms in medians.items():
            rows.append(
                {
                    "model": name,
                    "variant": variant,
                    "median_ms": ms,
                    "speedup_vs_fp32": medians["fp32"] / ms,
                    "sqnr_db": None if variant == "fp32" else sqnr_db(reference, logits(variants[variant], test)),
                    "build_s": build.get(variant),
                }
            )
    print(f"\n{'model':<15}{'variant':<11}{'median ms':>10}{'vs fp32':>9}{'SQNR dB':>9}{'build s':>9}")
    for r in rows:
        sq = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else "-"
        b = f"{r['build_s']:.0f}" if r["build_s"] is not None else "-"
        print(f"{r['model']:<15}{r['variant']:<11}{r['median_ms']:>10.2f}{r['speedup_vs_fp32']:>8.1f}x{sq:>9}{b:>9}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant_flows.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, args.out / "quant_flows.png")
    print(f"\nwrote {args.out / 'quant_flows.json'} and {args.out / 'quant_flows.png'}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    variants = sorted({r["variant"] for r in rows}, key=[r["variant"] for r in rows].index)
    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(models), 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [next((r["median_ms"] for r in rows if r["model"] == m and r["variant"] == v), 0) for m in models]
        bars = ax.bar([j + i * width for j in range(len(models))], ys, width, label=v)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("batch-1 latency, median ms (lower is better)")
    ax.set_title("fp32 vs int8 flows, interleaved, same process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
