"""The client's one exception family, translated from grpc.RpcError in one place.

Everything the client raises is an :class:`EdgeInferError`: a failed call keeps its
gRPC status; a frame source that fails (no camera, missing video) is a
:class:`SourceError`, which is also ``edgeinfer.media.SourceError`` (the grpc-free
error the sources raise), so either ``except`` catches it.
"""

from __future__ import annotations

import re
import urllib.parse

import grpc

from edgeinfer.media.sources import SourceError as MediaSourceError

# gRPC's "... ipv4:127.0.0.1:50051: Failed to connect to remote host: Connection refused" (address unquoted)
_REFUSED = re.compile(r"(?:ipv[46]:|unix:)?(\S+?): Failed to connect to remote host: Connection refused")

__all__ = ["EdgeInferError", "SourceError", "as_client_error"]


class EdgeInferError(Exception):
    """A failed call. ``code`` is the gRPC status; ``details`` the daemon's message.

    ``handshake``: the connection's TLS handshake failed (wrong CA, expired or refused certificate);
    retrying with the same credentials cannot help.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, handshake: bool = False) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.handshake = handshake

    def __str__(self) -> str:
        return self.reason

    @property
    def explanation(self) -> str:
        """``details`` in words a person reads: gRPC's "connections to all backends failing; last
        error: ... ipv6:%5B::1%5D:50051: Failed to connect to remote host: Connection refused" says
        "connection refused by [::1]:50051"."""
        details = urllib.parse.unquote(self.details)
        if self.code == grpc.StatusCode.UNAVAILABLE:
            found = _REFUSED.search(details)
            if found:
                return f"connection refused by {found.group(1)}"
        return details

    @property
    def reason(self) -> str:
        """``code: explanation``, the line the command line prints."""
        return f"{self.code.name}: {self.explanation}"

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> EdgeInferError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


class SourceError(EdgeInferError, MediaSourceError):
    """A camera, video, stream or image that cannot be opened or read.

    No call failed, so ``code`` is FAILED_PRECONDITION: fix the source, then try again.
    """

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details)

    def __str__(self) -> str:
        return self.details


def as_client_error(exc: BaseException) -> BaseException:
    """``exc`` as a member of the client's family when it is a source's error; else ``exc`` itself."""
    if isinstance(exc, MediaSourceError) and not isinstance(exc, SourceError):
        wrapped = SourceError(str(exc))
        wrapped.__cause__ = exc
        return wrapped
    return exc
