"""Client library for the edgeinfer daemon. Imports no torch: a robot needs only
``pip install edgeinfer`` (plus ``[camera]`` for OpenCV sources and JPEG encoding).

    from edgeinfer.client import EdgeClient, capture_frames

    with EdgeClient("localhost:50051") as client:
        for r in client.stream(capture_frames("clip.mp4"), model="squeezenet", top_k=5):
            print(r.sequence, r.prediction.top1.label if r.prediction else r.kind)

Everything it raises is an :class:`EdgeInferError` (a source that cannot be opened is
its subclass :class:`SourceError`).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# gRPC's C core prints each failed TLS handshake to stderr at INFO level (grpc/grpc#38058), which it
# shows unless GRPC_VERBOSITY says otherwise; read once, when grpc is first imported, so set here
# (unless the user or `edgeclient --log-level` chose): a wrong CA is then the one line EdgeInferError
# gives, not a log dump.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

if TYPE_CHECKING:
    from edgeinfer.client.api import EdgeClient
    from edgeinfer.client.errors import EdgeInferError, SourceError
    from edgeinfer.client.frames import Encoder, Frame
    from edgeinfer.client.results import ClassScore, Fidelity, FrameResult, ModelInfo, Prediction, Timings
    from edgeinfer.client.sources import ImageFile, capture_frames, image_files, image_frames, paced
    from edgeinfer.client.streaming import ResultStream

# Loaded on first use (PEP 562): `edgeclient` quiets gRPC's own log lines through the
# environment, which gRPC reads once, when it is first imported; the package must not
# import it before the command line has had its say.
_LAZY = {
    "EdgeClient": "api",
    "EdgeInferError": "errors",
    "SourceError": "errors",
    "Encoder": "frames",
    "Frame": "frames",
    "ClassScore": "results",
    "Fidelity": "results",
    "FrameResult": "results",
    "ModelInfo": "results",
    "Prediction": "results",
    "Timings": "results",
    "ImageFile": "sources",
    "capture_frames": "sources",
    "image_files": "sources",
    "image_frames": "sources",
    "paced": "sources",
    "ResultStream": "streaming",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ClassScore",
    "EdgeClient",
    "EdgeInferError",
    "Encoder",
    "Fidelity",
    "Frame",
    "FrameResult",
    "ImageFile",
    "ModelInfo",
    "Prediction",
    "ResultStream",
    "SourceError",
    "Timings",
    "capture_frames",
    "image_files",
    "image_frames",
    "paced",
]
