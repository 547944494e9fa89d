"""What an int8 model's loss is measured against, on which frames.

Without labels: fp32's own top-1 on the held-out frames (a frame whose answer changed is a
possible error; the share of such frames bounds the accuracy loss from above). With ``--eval
DIR`` (an ImageFolder whose class folders sort into the model's class order, as ImageNet val's
WordNet ids do): the labels, fp32 and int8 each right or wrong on the same images, and the
loss is the paired difference. Either way fp32's logits are computed once and kept.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeinfer.quant.calibration import IMAGE_SUFFIXES, read_image
from edgeinfer.quant.fidelity import Model, logits
from edgeinfer.quant.intervals import Loss, paired_loss
from edgeinfer.server.preprocess import Preprocessor

__all__ = ["Judge", "LabelledFrames", "load_labelled"]

log = logging.getLogger(__name__)


@dataclass
class LabelledFrames:
    inputs: torch.Tensor  # N x 3 x H x W, preprocessed
    labels: torch.Tensor  # N class indices
    skipped: int  # files that could not be decoded
    classes: int  # class folders


def load_labelled(
    folder: Path, preprocessor: Preprocessor, *, num_classes: int, limit: int | None = None
) -> LabelledFrames:
    """An ImageFolder's images and labels; unreadable files are skipped (one line each, and a count)."""
    if not folder.is_dir():
        raise ValueError(f"--eval {folder} is not a folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"--eval {folder} has no class folders (an ImageFolder: one folder per class)")
    if len(classes) > num_classes:
        raise ValueError(
            f"--eval {folder} has {len(classes)} class folders but the model has {num_classes} classes: "
            "the labels do not match the model"
        )
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((folder / c).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if limit:
        # Spread over the classes: sorted order would take the first classes only.
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    tensors, labels, skipped = [], [], 0
    for path, label in files:
        try:
            tensors.append(preprocessor(read_image(path)).tensor)
        except Exception as exc:  # a bad file is the data's problem, not the run's (as edgeclient --images)
            skipped += 1
            print(f"edgequant: skipped {path}: cannot decode it ({type(exc).__name__})", file=sys.stderr)
            continue
        labels.append(label)
    if skipped:
        print(f"edgequant: skipped {skipped} unreadable file(s) of {len(files)} under {folder}", file=sys.stderr)
    if not tensors:
        raise ValueError(f"--eval {folder} has no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return LabelledFrames(torch.stack(tensors), torch.tensor(labels), skipped, len(classes))


@dataclass
class Judge:
    """Frames, fp32's logits on them (computed once) and, with --eval, their labels."""

    inputs: torch.Tensor  # through the int8 model's preprocessing
    reference: torch.Tensor  # fp32 logits
    labels: torch.Tensor | None = None

    @property
    def against(self) -> str:
        return "labels" if self.labels is not None else "fp32"

    @property
    def frames(self) -> int:
        return len(self.inputs)

    def loss_of(self, approx: torch.Tensor) -> Loss:
        if self.labels is None:
            right = (self.reference.argmax(1) == approx.argmax(1)).tolist()
            return paired_loss([True] * len(right), right, against="fp32")
        return paired_loss(
            (self.reference.argmax(1) == self.labels).tolist(),
            (approx.argmax(1) == self.labels).tolist(),
            against="labels",
        )

    def measure(self, model: Model, batch: int = 16) -> tuple[Loss, torch.Tensor]:
        approx = logits(model, self.inputs, batch=batch)
        return self.loss_of(approx), approx

    def accuracy(self, approx: torch.Tensor) -> float | None:
        if self.labels is None:
            return None
        return float((approx.argmax(1) == self.labels).float().mean())


def make_judge(
    inputs: torch.Tensor, fp32: Model, fp32_inputs: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor | None
) -> Judge:
    """fp32's logits on ``inputs`` (converted to fp32's own preprocessing by ``fp32_inputs``)."""
    return Judge(inputs, logits(fp32, fp32_inputs(inputs), batch=16), labels)
