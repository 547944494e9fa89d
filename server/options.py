"""The daemon's named choices as str-Enums: the CLI derives its choices from them, the code compares
members, and a value means one thing everywhere. Imports no torch (``edgeserver --help`` stays fast)."""

from __future__ import annotations

import enum

__all__ = ["Precision", "PreprocessOn", "WeightsKind", "choices"]


class Precision(str, enum.Enum):
    """The numbers a model computes in. ``auto``: fp16 on CUDA, fp32 on the CPU."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"  # CUDA only
    INT8 = "int8"  # CPU only, from an edgequant artifact

    def __str__(self) -> str:
        return self.value


class PreprocessOn(str, enum.Enum):
    """Where a frame is decoded and preprocessed.

    ``inference``: on the model's inference thread, right before the forward pass:
    decode, preprocessing and inference share one OpenMP team instead of fighting over
    the same few cores, and a frame the ``latest`` policy drops is never decoded at all.
    ``stream``: on each stream's reader thread, overlapping the previous frame's
    inference: on CUDA (nvjpeg decodes, the GPU infers), and on a CPU where --threads
    leaves cores to spare. ``auto`` picks between them (``loading.auto_placement``).
    (Intra-op threads are one process-wide setting: calling torch.set_num_threads from a
    reader thread made int8 inference on the inference thread several times slower.)
    """

    AUTO = "auto"
    INFERENCE = "inference"
    STREAM = "stream"

    @classmethod
    def _missing_(cls, value: object) -> PreprocessOn | None:
        # "worker" was this placement's first name; kept so existing command lines still work.
        return cls.INFERENCE if value == "worker" else None

    def __str__(self) -> str:
        return self.value


class WeightsKind(str, enum.Enum):
    """Where fp32 weights come from (``--weights imagenet | PATH | random``)."""

    IMAGENET = "imagenet"
    FILE = "file"
    RANDOM = "random"

    def __str__(self) -> str:
        return self.value


def choices(enum_type: type[enum.Enum]) -> list[str]:
    """The values of ``enum_type``, for argparse's ``choices`` and for error messages."""
    return [member.value for member in enum_type]
