"""How a client reaches a daemon: TLS (optionally with a client certificate) and a bearer token.

The token is attached once, as gRPC call credentials, never by hand per call:
- over TLS, composed into the channel's TLS credentials;
- over plaintext to this host (a ``unix:`` socket or a loopback address), composed into gRPC's *local*
  credentials, which carry call credentials and check that the peer really is on this host;
- over plaintext to anything else gRPC will not send call credentials (they would travel in clear), so
  that takes ``insecure=True`` and a client interceptor, against a daemon started with ``--insecure``.

Cost (bench/security_overhead.py, 2 shared cores): gRPC Python runs a call-credentials plugin on a
thread it starts for each call (grpc/grpc#22471), about +0.2-0.3 ms per unary call; a stream pays it
once, its frames nothing. We keep call credentials all the same: gRPC itself then refuses to send
them over a channel that is neither TLS nor local.

A failed handshake comes back from gRPC as UNAVAILABLE with OpenSSL's text buried in it;
:func:`describe_handshake_failure` turns it into one line that names the cause.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

__all__ = [
    "TOKEN_ENV",
    "Credentials",
    "Pem",
    "describe_handshake_failure",
    "is_local_target",
    "read_pem",
    "read_token_file",
]

TOKEN_ENV = "EDGEINFER_TOKEN"

Pem = str | os.PathLike[str] | bytes


def read_pem(value: Pem | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path; a missing file is a ValueError naming it."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {value}: {exc.strerror}") from None


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The first token in a token file (one a line, ``#`` comments and blank lines skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"token file {path} holds no token (one a line; '#' starts a comment)")


def _host(target: str) -> str | None:
    """The host of a ``host:port`` target (dns:/// and ipv4:/ipv6: prefixes allowed); None for Unix sockets."""
    if target.startswith(("unix:", "unix-abstract:")):
        return None
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    if target.startswith("["):
        return target[1 : target.index("]")] if "]" in target else target
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def is_local_target(target: str) -> bool:
    """A Unix socket, ``localhost`` or a loopback IP: plaintext never leaves this host."""
    host = _host(target)
    if host is None:
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)

    def __repr__(self) -> str:  # never the token
        return "_BearerToken(***)"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Plaintext to another host (``insecure=True``): gRPC sends no call credentials there, so add the header."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def __repr__(self) -> str:
        return "_TokenInterceptor(***)"


class Credentials:
    """What :class:`~edgeinfer.client.EdgeClient` connects with. Paths or PEM bytes; the token is a string."""

    def __init__(
        self,
        *,
        tls_ca: Pem | None = None,
        tls_cert: Pem | None = None,
        tls_key: Pem | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError(
                "--tls-cert and --tls-key (tls_cert, tls_key) go together: a client certificate and its private key"
            )
        self.ca_name = _name(tls_ca)
        self.tls_ca = read_pem(tls_ca, "CA certificate")
        self.tls_cert = read_pem(tls_cert, "client certificate")
        self.tls_key = read_pem(tls_key, "client key")
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
            raise ValueError("the token is empty or has spaces")
        self._token = token.strip() if token is not None else None
        self.insecure = insecure

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def client_certificate(self) -> bool:
        return self.tls_cert is not None

    def __repr__(self) -> str:
        token = "***" if self._token else None
        return f"Credentials(tls={self.tls}, client_certificate={self.client_certificate}, token={token})"

    def channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self.tls:
            creds = grpc.ssl_channel_credentials(self.tls_ca, self.tls_key, self.tls_cert)
            if self._token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.metadata_call_credentials(_BearerToken(self._token))
                )
            return grpc.secure_channel(target, creds, options=options)
        if not self._token:
            return grpc.insecure_channel(target, options=options)
        if is_local_target(target):
            kind = grpc.LocalConnectionType.UDS if _host(target) is None else grpc.LocalConnectionType.LOCAL_TCP
            creds = grpc.composite_channel_credentials(
                grpc.local_channel_credentials(kind), grpc.metadata_call_credentials(_BearerToken(self._token))
            )
            return grpc.secure_channel(target, creds, options=options)
        if not self.insecure:
            raise ValueError(
                f"a token would travel in plaintext to {target}: give --tls-ca (tls_ca) for a TLS daemon, "
                f"or --insecure (insecure=True) for one started with --insecure"
            )
        channel = grpc.insecure_channel(target, options=options)
        return grpc.intercept_channel(channel, _TokenInterceptor(self._token))


def _name(value: Pem | None) -> str:
    return "the given CA" if value is None or isinstance(value, bytes) else str(value)


_OPENSSL_REASON = re.compile(r"OPENSSL_internal:([A-Z_]+)(?::\s*([^:]+))?")
# OpenSSL's reason (as gRPC passes it on) -> what it means for the user, in order of precedence.
_VERIFY_REASONS = (
    ("certificate has expired", "the daemon's certificate has expired (renew it: the daemon re-reads --tls-cert)"),
    ("certificate is not yet valid", "the daemon's certificate is not valid yet (check the clocks)"),
    ("self signed", "the daemon's certificate is self-signed and is not the CA given to the client"),
    ("self-signed", "the daemon's certificate is self-signed and is not the CA given to the client"),
)


def describe_handshake_failure(details: str, creds: Credentials, target: str) -> str | None:
    """One line naming why a connection's TLS handshake failed, or None when ``details`` is no such failure."""
    text = details or ""
    where = f"TLS handshake with {target} failed"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        for needle, meaning in _VERIFY_REASONS:
            if needle in text:
                return f"{where}: {meaning}"
        return f"{where}: the daemon's certificate is not signed by the CA the client trusts ({creds.ca_name})"
    if "Hostname Verification Check failed" in text or ("Peer name" in text and "not in peer certificate" in text):
        host = _host(target)
        return f"{where}: the daemon's certificate does not name {host!r} (connect by a name it lists)"
    if creds.tls and ("WRONG_VERSION_NUMBER" in text or "PACKET_LENGTH_TOO_LONG" in text):
        return f"{where}: the daemon does not speak TLS (started without --tls-cert); connect without --tls-ca (tls_ca)"
    if reason := _OPENSSL_REASON.search(text):
        return f"{where}: {reason[1]}{f' ({reason[2].strip()})' if reason[2] else ''}"
    if "Socket closed" in text or "Connection reset" in text:
        if creds.tls and not creds.client_certificate:
            return (
                f"{where}: the daemon closed the connection; it wants a client certificate "
                f"(--tls-cert/--tls-key, tls_cert/tls_key) signed by its --tls-client-ca"
            )
        if creds.tls:
            return (
                f"{where}: the daemon closed the connection; it does not accept this client certificate "
                f"(not signed by its --tls-client-ca, or expired)"
            )
        return (
            f"{target} closed the connection at once: it may serve TLS only "
            f"(give --tls-ca, tls_ca, with the CA that signed its certificate)"
        )
    return None
