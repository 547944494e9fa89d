"""What the daemon answers, as plain dataclasses (no protobuf types leak out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from edgeinfer.media.images import Fit
from edgeinfer.proto import edgeinfer_pb2 as pb

__all__ = ["ClassScore", "Fidelity", "FrameResult", "ModelInfo", "Prediction", "Timings", "percent"]

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def percent(probability: float) -> str:
    """A probability as a percentage, two significant digits: random weights give ~0.1%, never "0.00"."""
    value = probability * 100
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True)
class Prediction:
    classes: tuple[ClassScore, ...]
    timings: Timings
    model: str
    precision: str
    device: str
    batch_size: int

    @property
    def top1(self) -> ClassScore:
        return self.classes[0]

    @classmethod
    def from_proto(cls, p: pb.Prediction) -> Prediction:
        t = p.timings
        return cls(
            classes=tuple(ClassScore(c.index, c.label, c.probability) for c in p.classes),
            timings=Timings(t.queue_ms, t.decode_ms, t.preprocess_ms, t.inference_ms, t.total_ms),
            model=p.model,
            precision=p.precision,
            device=p.device,
            batch_size=p.batch_size,
        )


@dataclass(frozen=True)
class FrameResult:
    """The one answer to one streamed frame: a prediction, a drop, or an error."""

    sequence: int
    capture_time_ns: int
    prediction: Prediction | None = None
    dropped: str | None = None  # the reason, when the daemon dropped the frame
    error_code: grpc.StatusCode | None = None
    error: str | None = None
    latency_ms: float | None = None  # frame handed to the client (before encoding) -> answer, client-measured

    @property
    def kind(self) -> str:
        return "prediction" if self.prediction else "dropped" if self.dropped is not None else "error"

    @classmethod
    def from_proto(cls, r: pb.StreamResponse, latency_ms: float | None = None) -> FrameResult:
        which = r.WhichOneof("result")
        common: dict[str, Any] = {
            "sequence": r.sequence,
            "capture_time_ns": r.capture_time_ns,
            "latency_ms": latency_ms,
        }
        if which == "prediction":
            return cls(prediction=Prediction.from_proto(r.prediction), **common)
        if which == "dropped":
            return cls(dropped=r.dropped.reason, **common)
        return cls(error_code=_CODES.get(r.error.code, grpc.StatusCode.UNKNOWN), error=r.error.message, **common)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sequence": self.sequence, "kind": self.kind, "latency_ms": self.latency_ms}
        if self.prediction:
            p = self.prediction
            out.update(
                model=p.model,
                precision=p.precision,
                device=p.device,
                top_k=[{"index": c.index, "label": c.label, "probability": c.probability} for c in p.classes],
                timings=vars(p.timings),
                batch_size=p.batch_size,
            )
        elif self.dropped is not None:
            out["reason"] = self.dropped
        else:
            out.update(code=self.error_code.name if self.error_code else None, message=self.error)
        return out


@dataclass(frozen=True)
class Fidelity:
    top1_agreement: float
    top5_overlap: float
    sqnr_db: float
    frames: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    precision: str
    device: str
    input_size: tuple[int, int]
    num_classes: int
    weights: str
    aliases: tuple[str, ...] = ()
    engine: str = ""
    max_batch_size: int = 1
    batch_sizes: tuple[int, ...] = (1,)
    preprocess_on: str = ""
    fidelity: Fidelity | None = field(default=None)
    resize_size: int = 0  # the daemon resizes frames' shorter side to this before its crop (0: not said)
    runtime: str = ""  # "torch" or "onnxruntime": what runs the model in the daemon ("": an older daemon)

    @property
    def fit(self) -> Fit:
        """What the daemon's preprocessing keeps of a frame: what a client may shrink frames to."""
        height, width = self.input_size
        return Fit(self.resize_size, height if height == width else 0)

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        fidelity = None
        if m.HasField("fidelity"):
            f = m.fidelity
            fidelity = Fidelity(f.top1_agreement, f.top5_overlap, f.sqnr_db, f.frames)
        return cls(
            name=m.name,
            architecture=m.architecture,
            precision=m.precision,
            device=m.device,
            input_size=(m.input_height, m.input_width),
            num_classes=m.num_classes,
            weights=m.weights,
            aliases=tuple(m.aliases),
            engine=m.engine,
            max_batch_size=m.max_batch_size,
            batch_sizes=tuple(m.batch_sizes),
            preprocess_on=m.preprocess_on,
            fidelity=fidelity,
            resize_size=m.resize_size,
            runtime=m.runtime,
        )
