"""Domain errors of the daemon, each carrying the gRPC status it maps to.

They subclass grpc-interceptor's exceptions, so one ``ExceptionToStatusInterceptor``
(installed in :mod:`edgeinfer.server.app`) turns any of them raised by a servicer
into the RPC's status, streaming responses included. Inside a stream, a frame's
error is answered in-band instead (see :mod:`edgeinfer.server.session`) and the
stream goes on.
"""

from __future__ import annotations

from grpc_interceptor import exceptions as _grpc

__all__ = [
    "DeadlineExceeded",
    "EdgeInferError",
    "InternalError",
    "InvalidFrame",
    "InvalidRequest",
    "LimitExceeded",
    "ModelNotFound",
    "NotLocal",
    "NotReady",
    "SharedMemoryNotFound",
    "WeightsUnavailable",
]

EdgeInferError = _grpc.GrpcException
InternalError = _grpc.Internal  # a bug or a model failure: the frame is answered, the daemon goes on
DeadlineExceeded = _grpc.DeadlineExceeded


class InvalidRequest(_grpc.InvalidArgument):
    """A request that can never succeed as sent (bad top_k, config out of order)."""


class InvalidFrame(_grpc.InvalidArgument):
    """A frame whose bytes cannot become an image (corrupt JPEG, wrong raw size, empty)."""


class ModelNotFound(_grpc.NotFound):
    """The model asked for is not loaded in this daemon."""


class SharedMemoryNotFound(_grpc.NotFound):
    """The shared-memory object a stream names does not exist on the daemon's host."""


class LimitExceeded(_grpc.ResourceExhausted):
    """Over a configured limit: frame bytes, concurrent streams, shared-memory size."""


class NotReady(_grpc.Unavailable):
    """The daemon is loading models or draining for shutdown; retry later."""


class NotLocal(_grpc.FailedPrecondition):
    """Shared memory asked for by a client that is not on the daemon's host (or the daemon turned it off)."""


class WeightsUnavailable(_grpc.FailedPrecondition):
    """Model weights cannot be had (offline, missing file, incompatible artifact)."""
