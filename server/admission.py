"""Which calls may cost the daemon anything: caps per kind of call, in all and per connection.

Envoy's overload manager is the model: a call is admitted or refused before it
reads its body or first message, so a refused call costs a status and nothing
else. Each kind has a cap for the whole daemon and one per connection (gRPC's
peer string names one TCP connection: its address and port); a call over either
is refused at once with RESOURCE_EXHAUSTED. Health checks are never refused:
probes must see the daemon as it is, however busy.

Everything here runs on the event loop (:mod:`edgeinfer.server.event_loop`), so
the counters need no lock. Nothing here knows about gRPC.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass

from edgeinfer.server.errors import LimitExceeded

__all__ = ["MAX_UNARY_INFER_CALLS", "Admission", "CallKind", "Caps", "Ticket", "default_caps", "kind_of"]


class CallKind(str, enum.Enum):
    PROBE = "health check"  # grpc.health.v1 Check: never refused
    WATCH = "health watch"
    REFLECTION = "reflection stream"
    STREAM = "inference stream"  # StreamClassify and KServe's ModelStreamInfer (--max-streams in all)
    INFER = "unary inference call"  # Classify and KServe's ModelInfer
    UNARY = "metadata call"  # every other unary call (ListModels, GetModel, KServe metadata...)

    def __str__(self) -> str:
        return self.value


_KINDS = {
    "/grpc.health.v1.Health/Check": CallKind.PROBE,
    "/grpc.health.v1.Health/Watch": CallKind.WATCH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": CallKind.REFLECTION,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": CallKind.REFLECTION,
    "/edgeinfer.v1.EdgeInference/StreamClassify": CallKind.STREAM,
    "/inference.GRPCInferenceService/ModelStreamInfer": CallKind.STREAM,
    "/edgeinfer.v1.EdgeInference/Classify": CallKind.INFER,
    "/inference.GRPCInferenceService/ModelInfer": CallKind.INFER,
}


def kind_of(method: str, streaming: bool = False) -> CallKind:
    """The kind of a call to ``method`` (``/package.Service/Method``); an unknown streaming one counts as a stream."""
    kind = _KINDS.get(method)
    if kind is not None:
        return kind
    return CallKind.STREAM if streaming else CallKind.UNARY


@dataclass(frozen=True)
class Caps:
    total: int  # open at once in the whole daemon
    per_connection: int  # open at once on one connection


# Unary inference calls running at once, all methods together: each holds a frame (up to
# --max-frame-bytes, or a KServe batch) while it waits for the model.
MAX_UNARY_INFER_CALLS = 8


def default_caps(max_streams: int) -> dict[CallKind, Caps]:
    """The daemon's caps; ``max_streams`` is --max-streams (v1 and v2 streams together)."""
    return {
        # A watch is a Kubernetes or service-mesh probe: one or two per client is what they open.
        CallKind.WATCH: Caps(total=64, per_connection=4),
        CallKind.REFLECTION: Caps(total=16, per_connection=4),
        CallKind.STREAM: Caps(total=max_streams, per_connection=max_streams),
        CallKind.INFER: Caps(total=MAX_UNARY_INFER_CALLS, per_connection=MAX_UNARY_INFER_CALLS),
        CallKind.UNARY: Caps(total=256, per_connection=32),
    }


_ADVICE = {
    CallKind.WATCH: "close a watch, or poll with Check",
    CallKind.REFLECTION: "close a reflection stream when its answers are read",
    CallKind.STREAM: "close one, or start the daemon with a higher --max-streams",
    CallKind.INFER: "retry, or send many frames over one stream (StreamClassify, ModelStreamInfer)",
    CallKind.UNARY: "retry when the answers to the calls already sent have come",
}


class Ticket:
    """One admitted call; :meth:`release` (once, whatever happened to the call) gives its place back."""

    __slots__ = ("_admission", "connection", "kind")

    def __init__(self, admission: Admission | None, kind: CallKind, connection: str) -> None:
        self._admission = admission
        self.kind = kind
        self.connection = connection

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._leave(self)


class Admission:
    def __init__(self, caps: dict[CallKind, Caps]) -> None:
        self.caps = caps
        self._open: Counter[CallKind] = Counter()
        self._by_connection: Counter[tuple[CallKind, str]] = Counter()
        self.refused: Counter[CallKind] = Counter()

    def open(self, kind: CallKind) -> int:
        return self._open[kind]

    def enter(self, kind: CallKind, connection: str) -> Ticket:
        """Admit one call of ``kind`` on ``connection`` (gRPC's peer string), or raise LimitExceeded."""
        caps = self.caps.get(kind)
        if caps is None:  # never refused (health checks)
            return Ticket(None, kind, connection)
        key = (kind, connection)
        if self._open[kind] >= caps.total:
            self.refused[kind] += 1
            flag = f" (--max-streams {caps.total})" if kind is CallKind.STREAM else ""
            raise LimitExceeded(
                f"this daemon already has {self._open[kind]} {kind}s open, its limit{flag}; {_ADVICE[kind]}"
            )
        if self._by_connection[key] >= caps.per_connection:
            self.refused[kind] += 1
            raise LimitExceeded(
                f"this connection already has {self._by_connection[key]} {kind}s open, the most one connection "
                f"may; {_ADVICE[kind]}"
            )
        self._open[kind] += 1
        self._by_connection[key] += 1
        return Ticket(self, kind, connection)

    def _leave(self, ticket: Ticket) -> None:
        self._open[ticket.kind] -= 1
        key = (ticket.kind, ticket.connection)
        self._by_connection[key] -= 1
        if not self._by_connection[key]:
            del self._by_connection[key]
