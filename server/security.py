"""Who may reach the daemon and how: where it listens, TLS from PEM files, bearer tokens.

Secure by default (DESIGN.md "Security"):

- it listens on loopback unless TLS is configured or ``--insecure`` says plaintext on the network is meant;
- TLS certificates and keys are read from PEM files and re-read when they change on disk (or on
  ``request_reload()``, which SIGHUP calls), for new connections only: open streams keep theirs;
- bearer tokens guard every service but the standard health service, in one interceptor, compared in
  constant time. A token never reaches a log line: only "missing", "malformed" or "not accepted" does.

A Unix socket stays plaintext under TLS: it never leaves the host, and the socket file's permissions
(the daemon's umask) say which local users may connect. Tokens still apply on it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_interceptor import ServerInterceptor

from edgeinfer.server import metrics
from edgeinfer.server.certificates import ExpiredCertificate, check_dates
from edgeinfer.server.token_gate import TokenGate, token_strength_problem

__all__ = [
    "AUTH_EXEMPT_SERVICES",
    "LOOPBACK",
    "BearerTokenInterceptor",
    "ExposureError",
    "SecurityConfigError",
    "ServerTls",
    "Tokens",
    "check_exposure",
    "is_loopback",
    "tcp_address",
]

log = logging.getLogger(__name__)

# Kubernetes and systemd probe this without credentials; it reveals only SERVING or not.
AUTH_EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})

# The default listening host: grpc binds "localhost" on 127.0.0.1 and ::1 (where the host has IPv6),
# one port for both, also when the port is 0.
LOOPBACK = "localhost"


class SecurityConfigError(ValueError):
    """A TLS or token setting that cannot work: the one line says which file and why."""


class ExposureError(SecurityConfigError):
    """Plaintext on a non-loopback address without ``--insecure``."""


# -- where it listens --------------------------------------------------------------


def tcp_address(host: str, port: int) -> str:
    """``host:port`` as grpc takes it: an IPv6 literal gets its brackets."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def is_loopback(address: str) -> bool:
    """True for an address only this host can reach: loopback IPs, ``localhost``, Unix sockets.

    Any other name is taken as reachable from the network: what it resolves to can change.
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_exposure(addresses: Iterable[str], *, tls: bool, insecure: bool) -> list[str]:
    """Refuse plaintext on the network unless asked for; returns the addresses served in plaintext anyway.

    Without TLS, anyone on the network could run inference, read every frame and answer, and read the
    bearer tokens off the wire: so a non-loopback TCP address needs TLS, or ``--insecure`` to say so.
    """
    exposed = [a for a in addresses if not is_loopback(a)]
    if exposed and not tls and not insecure:
        raise ExposureError(
            f"refusing to serve {', '.join(exposed)} in plaintext: anyone on that network could run inference "
            f"and read frames and tokens; give --tls-cert/--tls-key for TLS, or --insecure to serve plaintext anyway"
        )
    return [] if tls else exposed


# -- TLS ---------------------------------------------------------------------------


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when a file is rewritten or swapped (a Kubernetes secret mount swaps a symlink)."""
    out = []
    for p in paths:
        s = os.stat(p)
        out.append((s.st_mtime_ns, s.st_size, s.st_ino, s.st_dev))
    return tuple(out)


class ServerTls:
    """TLS from PEM files: a certificate (chain) and its key, and for mutual TLS the clients' CA.

    ``server_credentials()`` hands grpc a fetch callback that it calls before each new connection's
    handshake; the callback re-reads the files when their size, mtime or inode changed (or after
    ``request_reload()``) and keeps serving the last good pair while the new files are half-written
    or do not match, so a rotation never drops a connection or fails a handshake.
    """

    def __init__(
        self, cert: str | Path, key: str | Path, client_ca: str | Path | None = None, *, allow_expired: bool = False
    ) -> None:
        self.cert = Path(cert)
        self.allow_expired = allow_expired  # tests only: what a client is told about an expired certificate
        self.key = Path(key)
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.reloads = 0  # how many times new files were taken after the first read
        self._lock = threading.Lock()
        self._forced = False
        self._refused: tuple[Any, ...] | None = None  # files already reported as unusable: warn once
        self._signature, self._config = self._read()

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @property
    def _paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def _read(self) -> tuple[tuple[Any, ...], grpc.ServerCertificateConfiguration]:
        """Read and check the files; raises SecurityConfigError naming the file and the reason."""
        for p in self._paths:
            if not p.is_file():
                raise SecurityConfigError(f"TLS file {p} does not exist or is not a file")
        try:
            signature = _signature(self._paths)
            blobs = [p.read_bytes() for p in self._paths]
        except OSError as exc:
            raise SecurityConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        # grpc accepts any bytes here and fails every handshake later; OpenSSL checks them now,
        # including that the key belongs to the certificate.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except _EncryptedKey:
            raise SecurityConfigError(f"{self.key} is encrypted: give the key unencrypted (mode 600)") from None
        except ssl.SSLError as exc:
            reason = "the key is not the certificate's" if exc.reason == "KEY_VALUES_MISMATCH" else exc.reason
            raise SecurityConfigError(
                f"{self.cert} and {self.key} are not a PEM certificate and its private key "
                f"({reason or 'not PEM, or unreadable'})"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cadata=blobs[2].decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or str(exc)
                raise SecurityConfigError(f"{self.client_ca} holds no PEM CA certificate ({reason})") from None
        try:  # an expired certificate never serves: refused at start, and at a rotation the old one stays
            soon = check_dates(blobs[0], self.cert)
        except ExpiredCertificate as exc:
            if not self.allow_expired:
                raise SecurityConfigError(str(exc)) from None
            soon = str(exc)
        except ValueError as exc:  # OpenSSL took it, the X.509 parser did not
            raise SecurityConfigError(f"{self.cert}: cannot read the certificate's dates ({exc})") from None
        if soon:
            log.warning("%s", soon)
        try:
            if [p.read_bytes() for p in self._paths] != blobs:  # rewritten while we checked: next time
                raise SecurityConfigError(f"{self.cert} changed while it was read")
        except OSError as exc:
            raise SecurityConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        config = grpc.ssl_server_certificate_configuration(
            [(blobs[1], blobs[0])], root_certificates=blobs[2] if self.client_ca else None
        )
        return signature, config

    def request_reload(self) -> None:
        """Re-read the files before the next handshake even if they look unchanged (SIGHUP)."""
        with self._lock:
            self._forced = True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetch callback: a new configuration, or None to keep the current one. Never raises."""
        try:
            with self._lock:
                try:
                    signature = _signature(self._paths)
                except OSError as exc:  # mid-rotation: a file is briefly missing
                    self._warn_once(("missing", exc.filename), f"cannot stat TLS file {exc.filename}")
                    return None
                if signature == self._signature and not self._forced:
                    return None
                self._forced = False
                try:
                    self._signature, self._config = self._read()
                except SecurityConfigError as exc:
                    self._warn_once(signature, str(exc))
                    return None
                config = self._config
                self._refused = None
                self.reloads += 1
            log.info("TLS: re-read %s and %s for new connections", self.cert, self.key)
            return config
        except Exception:  # an exception here would fail the handshake: keep the current certificate
            log.exception("TLS: re-reading the certificate failed; serving the previous one")
            return None

    def _warn_once(self, key: tuple[Any, ...], message: str) -> None:
        if key != self._refused:
            self._refused = key
            log.warning("TLS: %s; new connections keep the previous certificate", message)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._config, self._fetch, require_client_authentication=self.mutual)


# -- bearer tokens -----------------------------------------------------------------


class Tokens:
    """The accepted bearer tokens: from a file (one a line, ``#`` comments, blank lines) or given."""

    def __init__(
        self, tokens: Iterable[str] = (), *, path: str | Path | None = None, gate: TokenGate | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        # back-off per peer after wrong tokens (server/token_gate.py)
        self.gate = gate if gate is not None else TokenGate()
        self._tokens: tuple[bytes, ...] = ()
        if self.path is not None:
            self.reload()
        else:
            self._set(list(tokens), "the token list")

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        return cls(path=path)

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:  # never the tokens themselves
        return f"Tokens({len(self._tokens)} tokens{f' from {self.path}' if self.path else ''})"

    def _set(self, tokens: list[str], source: str) -> None:
        tokens = [t.strip() for t in tokens]
        if not tokens or not all(tokens):
            raise SecurityConfigError(f"{source} holds no token (one a line; '#' starts a comment)")
        bad = [i for i, t in enumerate(tokens, 1) if any(c.isspace() or not c.isprintable() for c in t)]
        if bad:
            raise SecurityConfigError(f"token {bad[0]} in {source} has spaces or control characters")
        weak = [(i, token_strength_problem(t)) for i, t in enumerate(tokens, 1)]
        weak = [(i, problem) for i, problem in weak if problem]
        if weak:
            raise SecurityConfigError(f"token {weak[0][0]} in {source} {weak[0][1]}")
        self._tokens = tuple(t.encode() for t in tokens)

    def reload(self) -> None:
        """Re-read the token file (SIGHUP); on an error the tokens accepted so far stay."""
        if self.path is None:
            return
        try:
            text = self.path.read_text()
            mode = self.path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"cannot read token file {self.path}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        self._set([line for line in lines if line and not line.startswith("#")], f"token file {self.path}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s can be read by other users (chmod 600 it)", self.path)

    def accepts(self, presented: bytes) -> bool:
        """Constant time: every token is compared, whatever matched before."""
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(token, presented)
        return ok


class BearerTokenInterceptor(ServerInterceptor):
    """``authorization: Bearer <token>`` on every call of every service but the exempt ones.

    Exempt by service name, so a service added to the server later is guarded without a change here.
    Install it first among the interceptors: nothing else runs for a call it refuses.
    """

    LOG_EVERY_S = 10.0  # refusals are logged at most this often (a client could retry in a loop)

    def __init__(self, tokens: Tokens, exempt: Iterable[str] = AUTH_EXEMPT_SERVICES) -> None:
        self.tokens = tokens
        self.exempt = frozenset(exempt)
        self._lock = threading.Lock()
        self._last_log = -float("inf")
        self._unlogged = 0

    def intercept(self, method: Callable, request_or_iterator: Any, context: grpc.ServicerContext, method_name: str):
        problem = self.refusal(method_name, context.invocation_metadata() or (), context.peer())
        if problem is not None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        return method(request_or_iterator, context)

    def refusal(self, method_name: str, metadata: Iterable[Any], peer: str) -> str | None:
        """Why a call to ``method_name`` is refused (logged and counted here), or None when it may go on.

        The daemon's event loop calls this from its front door (server/front_door.py) before the
        call reads anything: a refused call costs a status and nothing else.
        """
        service = method_name.lstrip("/").split("/", 1)[0]
        if service in self.exempt:
            return None
        problem = self.problem(metadata, peer)
        if problem is not None:
            self._refused(method_name, peer, problem)
        return problem

    def problem(self, metadata: Iterable[Any], peer: str) -> str | None:
        """Why a call from ``peer`` with ``metadata`` is refused, or None; counts its wrong tokens (TokenGate)."""
        gate = self.tokens.gate
        wait = gate.retry_after(peer)
        if wait > 0:  # decided before any token is compared
            return (
                f"too many wrong bearer tokens from this client: retry in {math.ceil(wait)} s "
                f"(see the daemon's --token-file)"
            )
        values = [m.value for m in metadata if m.key == "authorization"]
        if not values:
            return (
                "this daemon needs a bearer token: send metadata 'authorization: Bearer <token>' "
                "(EdgeClient(token=...), EDGEINFER_TOKEN, or edgeclient --token-file FILE)"
            )
        value = values[0].encode() if isinstance(values[0], str) else bytes(values[0])
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "the 'authorization' metadata must read 'Bearer <token>'"
        if not self.tokens.accepts(token.strip()):
            gate.failed(peer)
            return "the bearer token was not accepted by this daemon (see its --token-file)"
        gate.succeeded(peer)
        return None

    def _refused(self, method_name: str, peer: str, problem: str) -> None:
        metrics.UNAUTHENTICATED.inc()
        now = time.monotonic()
        with self._lock:
            if now - self._last_log < self.LOG_EVERY_S:
                self._unlogged += 1
                return
            self._last_log, unlogged, self._unlogged = now, self._unlogged, 0
        more = f" (and {unlogged} more refused since the last such line)" if unlogged else ""
        log.warning("refused %s from %s: %s%s", method_name, peer, problem.split(":")[0], more)
