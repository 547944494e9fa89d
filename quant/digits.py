"""An honest int8 accuracy check without ImageNet: scikit-learn's handwritten digits.

No ImageNet weights exist on this machine, and random weights say nothing about
accuracy. So: train seed architectures briefly on a small real labelled set that
ships inside scikit-learn (1,797 8x8 digits, upscaled to 64x64 RGB), quantize
them with the same flow as the daemon's artifacts, and compare fp32 and int8
accuracy on a held-out split that neither training nor calibration saw.

    python -m edgeinfer.quant.digits train --arch squeezenet1_0 --out tests/data/digits_squeezenet1_0.pt
    python -m edgeinfer.quant.digits check --arch squeezenet1_0 --weights tests/data/digits_squeezenet1_0.pt
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from edgeinfer.quant.fidelity import Model, logits
from edgeinfer.quant.flows import quantize_fx
from edgeinfer.quant.intervals import Loss, paired_loss
from edgeinfer.server.artifacts import default_engine

__all__ = ["DigitsCheck", "build", "check", "load_split", "train"]

CLASSES = 10
# Input side per architecture: SqueezeNet needs 64 px to keep a spatial map at its
# last Fire module; ResNet50 runs at 32 px (1x1 before pooling), 4x cheaper to train.
SIZES = {"squeezenet1_0": 64, "squeezenet1_1": 64, "resnet50": 32}
ARCHES = tuple(SIZES)


def load_split(
    size: int = 64, seed: int = 0, test_fraction: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y); x normalized to [-1, 1], 3 x size x size."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # N x 1 x 8 x 8 in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    x = (x - 0.5) / 0.5
    y = torch.tensor(digits.target)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    return x[tr].contiguous(), y[tr], x[te].contiguous(), y[te]


def build(arch: str) -> nn.Module:
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}")
    return tvm.get_model(arch, weights=None, num_classes=CLASSES)


def train(arch: str, *, epochs: int = 30, seed: int = 0, batch: int = 32, log: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    x, y, _, _ = load_split(SIZES[arch], seed)
    model = build(arch)
    # SqueezeNet's final conv + ReLU dies when started at a high rate (loss stuck at
    # ln 10 with AdamW 2e-3 or SGD 0.01, measured): warm up for one epoch, then cosine.
    steps_per_epoch = (len(x) + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 0.05, 1.0, steps_per_epoch),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, (epochs - 1) * steps_per_epoch)),
        ],
        [steps_per_epoch],
    )
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        total, started = 0.0, time.perf_counter()
        for i in range(0, len(x), batch):
            b = perm[i : i + batch]
            xb = x[b]
            # A little augmentation: shift by up to 1/16 of the side, so the model generalises.
            shift = SIZES[arch] // 16
            dx, dy = torch.randint(-shift, shift + 1, (2,)).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        if log:
            print(
                f"{arch} epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return model.eval()


def accuracy(model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
    return (logits(model, x, batch=64).argmax(1) == y).float().mean().item()


@dataclass
class DigitsCheck:
    arch: str
    fp32_accuracy: float
    int8_accuracy: float
    test_images: int
    fp32_right: list[bool] = field(default_factory=list)
    int8_right: list[bool] = field(default_factory=list)

    def loss(self) -> Loss:
        """fp32 - int8 top-1 in points with Newcombe's paired 95% interval (same digits, both models)."""
        return paired_loss(self.fp32_right, self.int8_right, against="labels")

    @property
    def drop_points(self) -> float:
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    def line(self) -> str:
        return (
            f"{self.arch}: fp32 {self.fp32_accuracy:.2%}, int8 {self.int8_accuracy:.2%} "
            f"({self.loss().text()} lost) on {self.test_images} held-out digits"
        )


def check(model: nn.Module, arch: str, *, engine: str | None = None, calibration_images: int = 256) -> DigitsCheck:
    """fp32 vs fx-int8 accuracy on the held-out split; calibrates on training images only."""
    x_train, _, x_test, y_test = load_split(SIZES[arch])
    model = model.eval()
    calib = x_train[:calibration_images]
    int8 = quantize_fx(
        copy.deepcopy(model),
        (calib[i : i + 32] for i in range(0, len(calib), 32)),
        engine=engine or default_engine(),
        example=calib[:1],
    )
    fp32_right = (logits(model, x_test, batch=64).argmax(1) == y_test).tolist()
    int8_right = (logits(int8, x_test, batch=64).argmax(1) == y_test).tolist()
    n = len(y_test)
    return DigitsCheck(arch, sum(fp32_right) / n, sum(int8_right) / n, n, fp32_right, int8_right)


def load(arch: str, path: Path) -> nn.Module:
    model = build(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and save a checkpoint (fp16 state_dict, to keep it small)")
    t.add_argument("--arch", choices=ARCHES, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--epochs", type=int, default=30)
    c = sub.add_parser("check", help="fp32 vs int8 accuracy on the held-out split")
    c.add_argument("--arch", choices=ARCHES, required=True)
    c.add_argument("--weights", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "train":
        model = train(args.arch, epochs=args.epochs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
        args.weights = args.out
    result = check(load(args.arch, args.weights), args.arch)
    print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
