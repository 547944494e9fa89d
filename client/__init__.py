"""Client library for the edgeinfer daemon. Imports no torch: a robot needs only
``pip install edgeinfer`` (plus ``[camera]`` for OpenCV sources and JPEG encoding).

    from edgeinfer.client import EdgeClient, capture_frames

    with EdgeClient("localhost:50051") as client:
        for r in client.stream(capture_frames("clip.mp4"), model="squeezenet", top_k=5):
            print(r.sequence, r.prediction.top1.label if r.prediction else r.kind)

Everything it raises is an :class:`EdgeInferError` (a source that cannot be opened is
its subclass :class:`SourceError`).
"""

from edgeinfer.client.api import EdgeClient
from edgeinfer.client.errors import EdgeInferError, SourceError
from edgeinfer.client.frames import Encoder, Frame
from edgeinfer.client.results import ClassScore, Fidelity, FrameResult, ModelInfo, Prediction, Timings
from edgeinfer.client.sources import ImageFile, capture_frames, image_files, image_frames, paced
from edgeinfer.client.streaming import ResultStream

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
