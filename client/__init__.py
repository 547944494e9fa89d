"""Client library for the edgeinfer daemon. Imports no torch: a robot needs only
``pip install edgeinfer`` (plus ``[camera]`` for OpenCV sources and JPEG encoding).

    from edgeinfer.client import EdgeClient, capture_frames

    with EdgeClient("localhost:50051") as client:
        for r in client.stream(capture_frames("clip.mp4"), model="squeezenet", top_k=5):
            print(r.sequence, r.prediction.top1.label if r.prediction else r.kind)
"""

import os

# gRPC's C core prints each failed TLS handshake to stderr at INFO level (grpc/grpc#38058), which it
# shows unless GRPC_VERBOSITY says otherwise; read once, when grpc is first imported, so set here
# (unless the user chose): a wrong CA is then the one line EdgeInferError gives, not a log dump.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from edgeinfer.client.api import EdgeClient
from edgeinfer.client.errors import EdgeInferError
from edgeinfer.client.frames import Encoder, Frame
from edgeinfer.client.results import ClassScore, Fidelity, FrameResult, ModelInfo, Prediction, Timings
from edgeinfer.media.sources import SourceError, capture_frames, image_frames, paced

__all__ = [
    "ClassScore",
    "EdgeClient",
    "EdgeInferError",
    "Encoder",
    "Fidelity",
    "Frame",
    "FrameResult",
    "ModelInfo",
    "Prediction",
    "SourceError",
    "Timings",
    "capture_frames",
    "image_frames",
    "paced",
]
