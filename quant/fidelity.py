"""How close an int8 model is to its fp32 original, and how much faster and smaller.

Top-1 agreement, mean top-5 overlap and logit SQNR on held-out frames; batch-1
latency of both, interleaved in one loop so machine noise hits both alike; and
with an ImageFolder (e.g. ImageNet val), real top-1/top-5 accuracy of both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SQNR_NOTE",
    "WEAK_EVIDENCE_FRAMES",
    "FidelityReport",
    "agree_top1",
    "agreement",
    "evaluate_folder",
    "interleaved_latency",
    "sqnr_db",
]

Model = Callable[[torch.Tensor], torch.Tensor]


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(|ref|^2 / |ref - approx|^2), over all logits."""
    noise = (reference - approx).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    return float("inf") if noise == 0 else 10.0 * torch.log10(torch.tensor(signal / noise)).item()


def agreement(reference: torch.Tensor, approx: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean |top5 ∩ top5| / 5) of two N x C logit tensors."""
    top1 = (reference.argmax(1) == approx.argmax(1)).float().mean().item()
    ref5, app5 = reference.topk(5, 1).indices.tolist(), approx.topk(5, 1).indices.tolist()
    overlap = statistics.fmean(len(set(a) & set(b)) / 5 for a, b in zip(ref5, app5, strict=True))
    return top1, overlap


def agree_top1(reference: torch.Tensor, approx: torch.Tensor) -> list[bool]:
    """Per frame: does ``approx`` give fp32's top-1 class?"""
    return (reference.argmax(1) == approx.argmax(1)).tolist()


def logits(model: Model, inputs: torch.Tensor, batch: int = 1) -> torch.Tensor:
    with torch.inference_mode():
        # .float(): inputs may be stored in float16 (the stand-ins' 21,600 test renders), models take float32
        return torch.cat([model(inputs[i : i + batch].float()).float() for i in range(0, len(inputs), batch)])


def interleaved_latency(
    models: dict[str, Model],
    example: torch.Tensor,
    *,
    iterations: int = 20,
    warmup: int = 5,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median ms per batch-1 forward of each model, alternating models every step."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):  # TorchScript's profiling executor optimises after a few calls
                model(example)
        for _ in range(iterations):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(example)
                times[name].append((time.perf_counter() - t0) * 1e3)
            if on_step:
                on_step()
    return {name: statistics.median(t) for name, t in times.items()}


def evaluate_folder(
    folder: Path, preprocess: Callable[[Path], torch.Tensor], models: dict[str, Model], *, limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 of each model on an ImageFolder whose class folders sort into class order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if f.is_file()]
    if limit:
        files = files[:limit]
    hits = {name: [0, 0] for name in models}
    with torch.inference_mode():
        for path, label in files:
            x = preprocess(path)[None]
            for name, model in models.items():
                top5 = model(x).topk(5, 1).indices[0].tolist()
                hits[name][0] += top5[0] == label
                hits[name][1] += label in top5
    n = max(1, len(files))
    return {name: {"top1": h[0] / n, "top5": h[1] / n, "images": len(files)} for name, h in hits.items()}


WEAK_EVIDENCE_FRAMES = 200

SQNR_NOTE = (
    "logit SQNR: 10*log10(sum fp32^2 / sum (fp32 - int8)^2) over the held-out logits; each 6 dB is about one "
    "bit of agreement, and below ~15 dB top-1 answers start to change"
)


@dataclass
class FidelityReport:
    frames: int
    top1_agreement: float
    top5_overlap: float
    sqnr_db: float
    fp32_ms: float
    int8_ms: float
    fp32_bytes: int
    int8_bytes: int
    accuracy: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)
    random_weights: bool = False
    loss: dict[str, Any] | None = None  # intervals.Loss.to_dict(): int8's top-1 loss with its 95% interval

    @property
    def weak_evidence(self) -> bool:
        return (self.loss["frames"] if self.loss else self.frames) < WEAK_EVIDENCE_FRAMES

    def headline(self) -> str | None:
        if self.random_weights:
            return (
                "RANDOM WEIGHTS: this model learned nothing, so agreement and loss below say nothing about "
                "accuracy (use --weights imagenet or a trained state_dict)"
            )
        return None

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "weak_evidence": self.weak_evidence}

    def table(self, title: str) -> str:
        rows = [
            ("held-out frames", f"{self.frames}"),
            ("top-1 agreement", f"{self.top1_agreement:.1%}"),
            ("top-5 overlap", f"{self.top5_overlap:.1%}"),
            ("logit SQNR", f"{self.sqnr_db:.1f} dB"),
            (
                "size fp32 -> int8",
                f"{self.fp32_bytes / 1e6:.2f} MB -> {self.int8_bytes / 1e6:.2f} MB "
                f"({self.fp32_bytes / max(1, self.int8_bytes):.1f}x smaller)",
            ),
            (
                "latency fp32 -> int8",
                f"{self.fp32_ms:.1f} ms -> {self.int8_ms:.1f} ms "
                f"({self.speedup:.1f}x faster, batch 1, interleaved medians)",
            ),
        ]
        if self.loss is not None:
            against = "labels" if self.loss["against"] == "labels" else "fp32's answers"
            rows.append(
                (
                    f"top-1 loss vs {against}",
                    f"{self.loss['points']:+.2f} points (95% {self.loss['low']:+.2f} .. {self.loss['high']:+.2f}, "
                    f"paired, {self.loss['frames']} frames)",
                )
            )
        for name, acc in (self.accuracy or {}).items():
            rows.append(
                (f"{name} accuracy", f"top-1 {acc['top1']:.2%}, top-5 {acc['top5']:.2%} on {int(acc['images'])} images")
            )
        width = max(len(r[0]) for r in rows)
        head = self.headline()
        lines = ([head] if head else []) + [title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows]
        if self.weak_evidence:
            n = self.loss["frames"] if self.loss else self.frames
            lines.append(
                f"WEAK EVIDENCE: {n} frames measured the loss; one frame is {100 / max(1, n):.1f} points, so a "
                f"loss under a few points cannot show (take {WEAK_EVIDENCE_FRAMES}+: --frames "
                f"{WEAK_EVIDENCE_FRAMES * 4} holds out {WEAK_EVIDENCE_FRAMES}, or --eval DIR)"
            )
        return "\n".join([*lines, SQNR_NOTE, *self.notes])
