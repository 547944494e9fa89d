"""What a frame is on its way to a model, with no torch: the decoded-or-raw image a request carries,
the preprocessed frame a runtime takes, and the recipe between them (:class:`Preprocessing`).

Both preprocessors (torch's in server/preprocess.py, numpy's in server/preprocess_numpy.py) and
every runtime share these types, so the daemon's core imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from edgeinfer.server.limits import FrameLimits

__all__ = [
    "CpuDevice",
    "FrameImage",
    "FramePreprocessor",
    "JpegImage",
    "PreprocessedFrame",
    "Preprocessing",
    "RawImage",
]


@dataclass(frozen=True)
class JpegImage:
    data: bytes


@dataclass(frozen=True)
class RawImage:
    height: int
    width: int
    data: bytes | memoryview  # the message's bytes, or a slice of a shared-memory map (server/shm.py)
    bgr: bool = False  # OpenCV's order; RGB otherwise


FrameImage = JpegImage | RawImage


@dataclass
class PreprocessedFrame:
    tensor: Any  # 3 x crop x crop in the model's dtype: a torch tensor on its device, or a numpy array
    decode_ms: float
    preprocess_ms: float


class FramePreprocessor(Protocol):
    """Turns one frame's bytes into a model input (either preprocessor)."""

    config: Preprocessing
    limits: FrameLimits
    max_frame_bytes: int

    def __call__(self, image: FrameImage) -> PreprocessedFrame: ...


@dataclass(frozen=True)
class CpuDevice:
    """The device of a model served without torch: reads like ``torch.device("cpu")`` where the daemon asks."""

    type: str = "cpu"
    index: int | None = None

    def __str__(self) -> str:
        return self.type


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center-crop a square, scale to [0, 1], normalize."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_weights(cls, weights: WeightsEnum) -> Preprocessing:
        t = weights.transforms()
        return cls(
            resize_size=int(t.resize_size[0]),
            crop_size=int(t.crop_size[0]),
            mean=tuple(float(v) for v in t.mean),
            std=tuple(float(v) for v in t.std),
            interpolation=t.interpolation.value,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            resize_size=int(d["resize_size"]),
            crop_size=int(d["crop_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
        )
