"""`edgequant`: make int8 artifacts for the daemon.

    edgequant --model squeezenet --calib clip.mp4 --out model-repo/
    edgequant --model resnet50 --calib photos/ --eval imagenet/val --out model-repo/
    edgequant --model squeezenet --calib synthetic --weights random --seed 0 --out model-repo/
    edgequant --model squeezenet --calib photos/ --format onnx --out model-repo/   # for a board (no torch there)
    edgequant --model squeezenet --calib clip.mp4 --frames 800 --max-loss 0.3 --sensitivity --out model-repo/

Prints a fidelity table per model and writes it into the artifact's sidecar.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from edgeinfer.quant.sources import check_source
from edgeinfer.server.model_names import UnknownModel, canonical_name

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage block) and exits 2, as edgeclient does."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgequant", description="Quantize torchvision classifiers to int8 artifacts.")
    p.add_argument("--model", action="append", required=True, help="model to quantize (repeatable)")
    p.add_argument(
        "--calib",
        required=True,
        help="calibration frames: an image folder, a video file, or 'synthetic' (only when nothing real exists)",
    )
    p.add_argument("--out", type=Path, default=Path("model-repo"), help="model repository (default: model-repo)")
    p.add_argument("--weights", default="imagenet", help="as edgeserver: 'imagenet', a state_dict PATH, or 'random'")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    p.add_argument("--engine", choices=["x86", "qnnpack"], default=None, help="default: x86 on x86-64, qnnpack on ARM")
    p.add_argument(
        "--flow", choices=["auto", "fx", "pt2e"], default="auto", help="default: the measured best per model"
    )
    p.add_argument(
        "--format",
        choices=["torchscript", "onnx", "onnx-fp32"],
        default="torchscript",
        help="torchscript: int8 for the torch runtime (default); onnx: int8 QDQ for ONNX Runtime, what a board "
        "serves without torch; onnx-fp32: fp32 ONNX",
    )
    p.add_argument(
        "--fp32-layers",
        default="",
        metavar="A,B",
        help="conv/linear layers or residual blocks (module names, e.g. features.0,classifier.1 or layer1.0) to "
        "keep in fp32: mixed precision (a block keeps its add in fp32 too)",
    )
    p.add_argument(
        "--max-loss",
        type=float,
        default=None,
        metavar="POINTS",
        help="accuracy budget in top-1 points: try the other activation observer, then put the most sensitive "
        "layers (a residual block whole, with its add) back in fp32 one at a time until the loss (vs --eval's "
        "labels, else vs fp32's answers on the held-out frames) is within it; the report gives the loss's "
        "95%% interval and the speed it cost",
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="rank every layer by how much int8 moves the logits (table, sidecar, sensitivity.png)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=64,
        help="frames sampled from --calib; 1/4 held out and never calibrated (default: 64; 200+ held out for a "
        "loss you can trust: --frames 800)",
    )
    p.add_argument("--eval", type=Path, default=None, metavar="DIR", help="ImageFolder for real top-1/top-5")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate at most this many images")
    p.add_argument(
        "--inception-transform",
        choices=["fold", "keep"],
        default="fold",
        help="Inception v3's input re-normalization: fold into preprocessing (default) or keep in the graph",
    )
    p.add_argument("--latency-iterations", type=int, default=20, help="interleaved fp32/int8 runs (default: 20)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print each sidecar as JSON after its table")
    return p


def _progress(desc: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame" if "calib" in desc else "step", file=sys.stderr, leave=False)


def _mistake(args: argparse.Namespace, fp32_layers: list[str]) -> str | None:
    mixing = fp32_layers or args.max_loss is not None or args.sensitivity
    if args.max_loss is not None and args.max_loss < 0:
        return f"--max-loss {args.max_loss:g}: no budget below 0 points can be met (all-fp32 loses exactly 0)"
    if mixing and args.format == "onnx-fp32":
        return "--fp32-layers, --max-loss and --sensitivity apply to int8 (--format torchscript or onnx)"
    if mixing and args.flow == "pt2e":
        return "--fp32-layers, --max-loss and --sensitivity need --flow fx (or --format onnx)"
    if args.format != "torchscript" and (args.flow != "auto" or args.engine):
        return "--flow and --engine apply to --format torchscript only"
    if args.eval is not None and not args.eval.is_dir():
        return f"--eval {args.eval}: not a folder (an ImageFolder: one folder of images per class)"
    if args.frames < 4:
        return f"--frames {args.frames}: calibration needs at least 4 frames"
    return None


def main(argv: list[str] | None = None) -> int:
    from edgeinfer.server.cli_support import QUANT_MODULES, require_extra

    require_extra("edgequant", "quant", QUANT_MODULES)  # a client-only install: one line naming the extra
    parser = build_parser()
    args = parser.parse_args(argv)
    fp32_layers = [name.strip() for name in args.fp32_layers.split(",") if name.strip()]
    mistake = _mistake(args, fp32_layers)
    if mistake:  # one line, before torch loads
        print(f"edgequant: {mistake}", file=sys.stderr)
        return 2
    # Before torch loads (seconds): a mistake in the command line is one line at once.
    for name in args.model:
        try:
            canonical_name(name)
        except UnknownModel as exc:
            parser.error(f"argument --model: {exc}")
    try:
        check_source(args.calib)
    except ValueError as exc:
        parser.error(f"argument --calib: {exc}")
    # One line per warning, ours first: "edgequant: skipped photos/notes.jpg: not an image ..."
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="edgequant: %(message)s")

    import torch

    from edgeinfer.quant.quantize import quantize
    from edgeinfer.server.errors import EdgeInferError
    from edgeinfer.server.weights import WeightsSource

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = WeightsSource.parse(args.weights, seed=args.seed)
    for name in args.model:
        try:
            common = dict(  # what both artifact kinds are made from
                calib=args.calib,
                out=args.out,
                weights=weights,
                fp32_layers=fp32_layers,
                max_loss=args.max_loss,
                sensitivity=args.sensitivity,
                frames=args.frames,
                eval_dir=args.eval,
                eval_limit=args.eval_limit,
                inception_transform=args.inception_transform,
                latency_iterations=args.latency_iterations,
                progress=_progress,
            )
            if args.format != "torchscript":
                from edgeinfer.quant.onnx_export import make_onnx_artifact

                precision = "fp32" if args.format == "onnx-fp32" else "int8"
                artifact = make_onnx_artifact(name, precision=precision, **common)
            else:
                flow = None if args.flow == "auto" else args.flow
                artifact = quantize(name, engine=args.engine, flow=flow, **common)
        except EdgeInferError as exc:
            print(f"edgequant: {name}: {exc.details}", file=sys.stderr)
            return 2
        except (ValueError, RuntimeError) as exc:
            print(f"edgequant: {name}: {exc}", file=sys.stderr)
            return 2
        meta = artifact.meta
        how = meta.get("runtime", "") if meta.get("format") == "onnx" else meta.get("engine", "")
        title = f"{meta['model']} {meta['precision']} ({meta.get('format', 'torchscript')}, {meta['flow']}, {how})"
        title += f" -> {artifact.folder}"
        print(artifact.report.table(title), flush=True)
        print(flush=True)
        if args.json:
            print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
