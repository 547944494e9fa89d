"""int8 you can trust, proven on trained stand-ins: loss with its paired interval, the budget, the speed.

    nice python -m bench.quant_trust train                # the stand-ins, seeded (tests/data/standin_*.pt)
    nice python -m bench.quant_trust run --threads 1      # bench/results/quant_trust.{json,md,png}
    nice python -m bench.quant_trust sensitivity          # bench/results/quant_sensitivity/: every seed model

For each stand-in (:mod:`edgeinfer.quant.standins`: SqueezeNet 1.0, 1.1 and ResNet50 topologies on
digit renders; ResNet50 on the clutter task) on its 21,600 held-out test renders:
plain int8's top-1 loss against the labels with Newcombe's paired 95% interval; then the
accuracy budget (``--max-loss 0.3``'s search, :func:`edgeinfer.quant.mixed.choose`) judged on
the same renders, its loss and interval, the layers it kept in fp32; batch-1 latency of fp32,
plain int8 and the budget's choice, interleaved in one loop. And the budget's cost with 500
judged frames (what ``edgequant --max-loss`` does on a 2,000-frame --frames run), timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from edgeinfer.quant import standins
from edgeinfer.quant.accuracy import Judge
from edgeinfer.quant.budget import Plan
from edgeinfer.quant.fidelity import interleaved_latency, logits
from edgeinfer.quant.flows import OBSERVERS, quantize_fx
from edgeinfer.quant.intervals import frames_needed, verdict
from edgeinfer.quant.mixed import choose

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
STANDINS = [
    ("squeezenet1_0", "digits"),
    ("squeezenet1_1", "digits"),
    ("resnet50", "digits"),
    ("resnet50", "clutter"),
]
EPOCHS = {"squeezenet1_0": 18, "squeezenet1_1": 18, "resnet50": 8}


def checkpoint(arch: str, task: str) -> Path:
    return DATA / f"standin_{arch}_{task}.pt"


def _train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)  # one: on a shared 2-core machine, two threads mostly spin
    for arch, task in STANDINS:
        if args.only and f"{arch}/{task}" not in args.only:
            continue
        started = time.perf_counter()
        model = standins.train(arch, task, epochs=args.epochs or EPOCHS[arch], seed=0)
        path = standins.save(model, checkpoint(arch, task))
        x, y = standins.test_set(task, copies=4, size=standins.SIZES[arch])
        acc = (logits(model, x.float(), batch=256).argmax(1) == y).float().mean().item()
        print(
            f"{arch}/{task}: {path} ({path.stat().st_size / 1e3:.0f} kB), {time.perf_counter() - started:.0f} s, "
            f"fp32 top-1 {acc:.2%} on 2,160 test renders",
            flush=True,
        )
    return 0


def _builder(model: torch.nn.Module, calib: torch.Tensor) -> Any:
    def build(plan: Plan) -> Any:
        return quantize_fx(
            copy.deepcopy(model),
            (calib[i : i + 32] for i in range(0, len(calib), 32)),
            engine="x86",
            example=calib[:1],
            observer=plan.observer,
            fp32_layers=plan.fp32_layers,
        )

    return build


def _full_size_speed(arch: str, plan: Plan, iterations: int) -> dict[str, float]:
    """The speed the plan costs on the full-size seed model (224 px; weights do not change speed).

    The stand-ins are narrow and 32-48 px, where int8's per-op overhead outweighs its cheaper
    arithmetic; their layer names are the seed model's, so the same plan applies to it.
    """
    from edgeinfer.quant.calibration import load_frames, offline_preprocessor
    from edgeinfer.quant.quantize import prepare_for_int8
    from edgeinfer.server.registry import get_spec
    from edgeinfer.server.weights import WeightsSource, build_model

    spec = get_spec(arch)
    fp32 = build_model(spec, WeightsSource("random", seed=0))
    model, pre = prepare_for_int8(spec, copy.deepcopy(fp32))
    data = load_frames("synthetic", offline_preprocessor(pre), count=16)
    build = _builder(model, data.calibration)
    models = {"fp32": fp32, "int8": build(Plan(plan.observer))}
    if plan.fp32_layers:
        models["mixed"] = build(plan)
    return interleaved_latency(models, data.held_out[:1], iterations=iterations)


# Builds the budget may spend per stand-in (each is measured on all 21,600 renders): the clutter
# task took 8 on 2,160 of them (two observers, then six units back in fp32).
MAX_BUILDS = 12


def _one(arch: str, task: str, max_loss: float, iterations: int) -> dict[str, Any]:
    model = standins.load(arch, checkpoint(arch, task))
    x_src, y_src, _, _ = standins.source_split()
    size = standins.SIZES[arch]
    calib, _ = standins.render(x_src[:256], y_src[:256], copies=1, task=task, seed=777, size=size)  # training digits
    calib = calib.float()
    x, y = standins.test_set(task, size=size)
    x = x.float()
    judge = Judge(x, logits(model, x, batch=256), y)
    build = _builder(model, calib)

    def batches() -> Any:
        return (calib[i : i + 32] for i in range(0, len(calib), 32))

    started = time.perf_counter()
    outcome = choose(
        model,
        build,
        judge,
        batches,
        fp32_layers=[],
        max_loss=max_loss,
        sensitivity=True,
        reduce_range=True,
        observers=OBSERVERS,
        on_step=lambda s: print(f"  {arch}/{task}: {s.why}: {s.loss.text()}", file=sys.stderr, flush=True),
        max_builds=MAX_BUILDS,
    )
    search_s = time.perf_counter() - started
    plain = outcome.plain_model
    models = {"fp32": model, "int8": plain}
    if outcome.plan.fp32_layers or outcome.plan.observer != "histogram":
        models["mixed"] = outcome.model
    latency = interleaved_latency(models, x[:1], iterations=iterations)
    assert outcome.plain_loss is not None

    # The budget on 500 judged frames, as edgequant --max-loss does with --frames 2000: the time it takes.
    small = Judge(x[::43][:500], judge.reference[::43][:500], y[::43][:500])
    started = time.perf_counter()
    quick = choose(
        model,
        build,
        small,
        batches,
        fp32_layers=[],
        max_loss=max_loss,
        sensitivity=False,
        reduce_range=True,
        observers=OBSERVERS,
        max_builds=MAX_BUILDS,
    )
    quick_s = time.perf_counter() - started
    full = _full_size_speed(arch, outcome.plan, iterations)
    return {
        "full_size_latency_ms": full,
        "full_size_speedup": {k: full["fp32"] / v for k, v in full.items()},
        "arch": arch,
        "task": task,
        "test_images": judge.frames,
        "fp32_top1": judge.accuracy(judge.reference),
        "plain_int8": outcome.plain_loss.to_dict(),
        "budget": max_loss,
        "budget_met": bool(outcome.budget and outcome.budget.met),
        "chosen": {
            "observer": outcome.plan.observer,
            "fp32_layers": list(outcome.plan.fp32_layers),
            "loss": outcome.loss.to_dict(),
            "verdict": verdict(outcome.loss, max_loss),
            "frames_needed": frames_needed(outcome.loss, max_loss),
        },
        "steps": outcome.budget.to_dict()["steps"] if outcome.budget else [],
        "search_seconds": round(search_s, 1),
        "latency_ms": latency,
        "speedup": {k: latency["fp32"] / v for k, v in latency.items()},
        "sensitivity": [r.to_dict() for r in outcome.sensitivity],
        "quick_500": {
            "seconds": round(quick_s, 1),
            "fp32_layers": list(quick.plan.fp32_layers),
            "observer": quick.plan.observer,
            "loss": quick.loss.to_dict(),
        },
    }


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# int8 you can trust: trained stand-ins (bench/quant_trust.py)",
        "",
        "Top-1 loss = fp32 - int8 on the same held-out test renders, in points, with Newcombe's paired 95% interval.",
        "",
        "| stand-in | test images | fp32 top-1 | plain int8 loss | with --max-loss 0.3 | kept fp32 | verdict "
        "| speed int8 / chosen vs fp32: stand-in, full-size 224 px | search (s) | search on 500 frames (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, c = r["plain_int8"], r["chosen"]["loss"]
        kept = ", ".join(r["chosen"]["fp32_layers"]) or "none"
        if r["chosen"]["observer"] != "histogram":
            kept += f" ({r['chosen']['observer']} observer)"
        sp, full = r["speedup"], r["full_size_speedup"]
        lines.append(
            f"| {r['arch']} / {r['task']} | {r['test_images']:,} | {r['fp32_top1']:.2%} | "
            f"{p['points']:+.2f} ({p['low']:+.2f} .. {p['high']:+.2f}) | "
            f"{c['points']:+.2f} ({c['low']:+.2f} .. {c['high']:+.2f}) | {kept} | {r['chosen']['verdict']} | "
            f"{sp['int8']:.1f}x / {sp.get('mixed', sp['int8']):.1f}x; "
            f"{full['int8']:.1f}x / {full.get('mixed', full['int8']):.1f}x | {r['search_seconds']} | "
            f"{r['quick_500']['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [f"{r['arch']}\n{r['task']}" for r in rows]
    for offset, key, label, colour in (
        (-0.18, "plain", "plain int8", "#c44e52"),
        (0.18, "chosen", "--max-loss 0.3", "#4c72b0"),
    ):
        losses = [r["plain_int8"] if key == "plain" else r["chosen"]["loss"] for r in rows]
        xs = [i + offset for i in range(len(rows))]
        pts = [loss["points"] for loss in losses]
        err = [[p - loss["low"] for p, loss in zip(pts, losses, strict=True)],
               [loss["high"] - p for p, loss in zip(pts, losses, strict=True)]]  # fmt: skip
        ax.bar(xs, pts, width=0.34, color=colour, label=label, yerr=err, capsize=3)
    ax.axhline(0.3, color="grey", linestyle="--", linewidth=1, label="budget 0.3 points")
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    ax.set_ylabel("top-1 loss vs fp32 (points, 95% paired CI)")
    ax.set_title(f"int8 loss on {rows[0]['test_images']:,} held-out renders per stand-in", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    order = {f"{a}/{t}": i for i, (a, t) in enumerate(STANDINS)}
    rows = sorted(rows, key=lambda r: order.get(f"{r['arch']}/{r['task']}", 99))
    (out / "quant_trust.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "quant_trust.md").write_text(_markdown(rows))
    _plot(rows, out / "quant_trust.png")


def _merge(args: argparse.Namespace) -> int:
    """One table and plot from runs made separately (``run --only ... --out DIR``)."""
    rows = [row for path in args.inputs for row in json.loads(path.read_text())]
    _write(rows, args.out)
    print(_markdown(rows))
    return 0


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    rows = []
    for arch, task in STANDINS:
        if args.only and f"{arch}/{task}" not in args.only:
            continue
        if not checkpoint(arch, task).is_file():
            print(f"no {checkpoint(arch, task)}: run `python -m bench.quant_trust train` first", file=sys.stderr)
            return 2
        rows.append(_one(arch, task, args.max_loss, args.iterations))
        print(_markdown(rows).splitlines()[-1], flush=True)
    _write(rows, args.out)
    print(_markdown(rows))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    """Every seed model's per-layer sensitivity (seeded random weights: which layers int8 moves most)."""
    from edgeinfer.quant.calibration import load_frames, offline_preprocessor
    from edgeinfer.quant.fake_quant import FakeQuantizer
    from edgeinfer.quant.quantize import prepare_for_int8
    from edgeinfer.quant.sensitivity import chart, rank, table
    from edgeinfer.server.registry import get_spec
    from edgeinfer.server.weights import WeightsSource, build_model

    torch.set_num_threads(args.threads)
    folder = args.out / "quant_sensitivity"
    folder.mkdir(parents=True, exist_ok=True)
    report = ["# Per-layer sensitivity of the seed models (bench/quant_trust.py sensitivity)", ""]
    report.append(
        f"RANDOM WEIGHTS (seed 0): no ImageNet weights here, so this ranks the layers of untrained models "
        f"on {args.frames} synthetic frames; with real weights run `edgequant --sensitivity`. "
        "SQNR of the logits vs fp32 with only that layer int8 / all but it int8."
    )
    for name in args.models:
        spec = get_spec(name)
        model, pre = prepare_for_int8(spec, build_model(spec, WeightsSource("random", seed=0)))
        data = load_frames("synthetic", offline_preprocessor(pre), count=args.frames + 8)
        started = time.perf_counter()
        fq = FakeQuantizer(model)
        fq.calibrate(data.batches())
        frames = data.calibration[: args.frames]
        rows = rank(fq, frames, fq.logits([], frames))
        chart(rows, folder / f"{name}.png", f"{name} (random weights): per-layer sensitivity")
        report += ["", f"## {name} ({len(rows)} layers, {time.perf_counter() - started:.0f} s)", "", "```"]
        report += [table(rows, limit=10), "```", f"![{name}]({name}.png)"]
        (folder / f"{name}.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        print(f"{name}: {len(rows)} layers ranked", flush=True)
    (folder / "README.md").write_text("\n".join(report) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the stand-ins (seeded) into tests/data")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--only", nargs="*", default=None, help="e.g. resnet50/clutter")
    t.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run", help="losses, budget, speed on the 21,600 test renders")
    r.add_argument("--max-loss", type=float, default=0.3)
    r.add_argument("--iterations", type=int, default=50)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--only", nargs="*", default=None)
    r.add_argument("--out", type=Path, default=Path("bench/results"))
    s = sub.add_parser("sensitivity", help="per-layer sensitivity of every seed model (random weights)")
    s.add_argument(
        "--models", nargs="+", default=["squeezenet1_0", "squeezenet1_1", "vgg16", "inception_v3", "resnet50"]
    )
    s.add_argument("--frames", type=int, default=4)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", type=Path, default=Path("bench/results"))
    m = sub.add_parser("merge", help="one table and plot from several runs' quant_trust.json")
    m.add_argument("inputs", nargs="+", type=Path)
    m.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    return {"train": _train, "run": _run, "sensitivity": _sensitivity, "merge": _merge}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
