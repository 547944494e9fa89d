"""The client's one exception, translated from grpc.RpcError in one place."""

from __future__ import annotations

import grpc

__all__ = ["EdgeInferError"]


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

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> EdgeInferError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")
