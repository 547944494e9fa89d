"""Bearer tokens a guess cannot find: at least 128 bits at start, and a back-off per peer after failures.

Issue 26 found a 1-character token file accepted and 2,094 wrong tokens a second answered with no
throttling. Two guards:

- ``token_strength_problem``: a token's strength is estimated as its length times log2 of the smallest
  usual alphabet that holds it (digits 10, hex 16, one-case letters and digits 36, base64/base64url 64,
  printable ASCII 95); under 128 bits is refused at start (``openssl rand -hex 16``: 32 hex digits, 128
  bits; ``python -c 'import secrets; print(secrets.token_urlsafe(24))'``: 32 characters, 192 bits). A
  token of fewer than 8 distinct characters is refused whatever its length ("aaaa...").
- ``TokenGate``: after ``free_failures`` wrong tokens in a row from one peer, that peer's calls are
  refused without looking at their token for ``base_s`` seconds, doubling with each further failure up to
  ``max_s``; a right token (outside a back-off) clears its count. A peer is its IP address, and on
  loopback its user as well (server/peers.py), so that one local user's guesses do not lock out another's
  robot. A missing or malformed header is no guess and is not counted. The refusal is decided before any
  token is compared and costs no thread: the caller answers at once (the gRPC interceptor in
  server/security.py, or any admission layer that sees the peer first).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeinfer.server.peers import Endpoint, parse_peer, tcp_peer_uid

__all__ = ["MIN_TOKEN_BITS", "TokenGate", "token_bits", "token_strength_problem"]

MIN_TOKEN_BITS = 128
UID_CACHE_S = 5.0  # a connection end's uid is looked up again after this long (its port may be reused)
_HEX = frozenset("0123456789abcdef")
_ALPHABETS: tuple[tuple[int, Callable[[str], bool]], ...] = (
    (10, str.isdigit),
    (16, lambda t: set(t.lower()) <= _HEX and (t.islower() or t.isupper() or t.isdigit())),
    (36, lambda t: t.isalnum() and t.isascii() and (t.lower() == t or t.upper() == t)),
    (64, lambda t: t.rstrip("=").replace("-", "").replace("_", "").replace("+", "").replace("/", "").isalnum()),
)


def token_bits(token: str) -> float:
    """The strength estimate: length x log2(alphabet), the alphabet being the smallest usual one that fits."""
    body = token.rstrip("=") or token
    for size, fits in _ALPHABETS:
        if body.isascii() and fits(body):
            return len(body) * math.log2(size)
    return len(body) * math.log2(95)


def token_strength_problem(token: str) -> str | None:
    """Why ``token`` is too weak to guard the daemon, or None."""
    bits = token_bits(token)
    if bits >= MIN_TOKEN_BITS and len(set(token)) >= 8:
        return None
    how = "e.g. openssl rand -hex 16 (32 hex digits) or python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    if bits < MIN_TOKEN_BITS:
        return f"is about {bits:.0f} bits ({len(token)} characters), under the {MIN_TOKEN_BITS} needed: {how}"
    return f"has only {len(set(token))} distinct characters: make one at random ({how})"


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0
    seen: float = 0.0


def _quick_uid(where: Endpoint) -> int | None:
    return tcp_peer_uid(where, verify=False)


class TokenGate:
    """Per-peer back-off after repeated wrong tokens; thread-safe, bounded in the peers it remembers."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_s: float = 1.0,
        max_s: float = 60.0,
        forget_s: float = 600.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        uid_of: Callable[[Endpoint], int | None] | None = None,
        lookups_per_s: int = 20,
    ) -> None:
        self.free_failures = free_failures
        self.base_s = base_s
        self.max_s = max_s
        self.forget_s = forget_s
        self.max_peers = max_peers
        self._clock = clock
        self._uid_of = uid_of or _quick_uid
        self.lookups_per_s = lookups_per_s
        self._window = (0, 0)  # (second, lookups in it)
        self._lock = threading.Lock()
        self._records: OrderedDict[Any, _Record] = OrderedDict()
        self._uids: OrderedDict[Endpoint, tuple[int | None, float]] = OrderedDict()
        self._hosts: dict[Any, int] = {}  # host -> records under it: most calls' peers have none, and skip the uid

    @staticmethod
    def _host(peer: str) -> Any:
        """The first part of a peer's key, found without reading /proc: its IP, 'unix', or the peer text."""
        where = parse_peer(peer)
        if isinstance(where, Endpoint):
            return where.ip
        return "unix" if where == "unix" else f"other:{peer}"

    def _key(self, peer: str) -> tuple[Any, ...]:
        """(host,) or, on loopback, (host, the peer's uid) where the kernel tells it."""
        host = self._host(peer)
        where = parse_peer(peer)
        if isinstance(where, Endpoint) and where.ip.is_loopback:
            return (host, self._uid(where))
        return (host,)

    def _uid(self, where: Endpoint) -> int | None:
        """The loopback peer's uid, kept UID_CACHE_S per connection end: the front door may ask on every call,
        and reading the kernel's tables costs more than a call's other checks together."""
        now = self._clock()
        with self._lock:
            cached = self._uids.get(where)
            if cached is not None and cached[1] > now:
                return cached[0]
        with self._lock:
            second, used = self._window
            second, used = (second, used + 1) if int(now) == second else (int(now), 1)
            self._window = (second, used)
        # The kernel's tables are read at most lookups_per_s times a second (a flood of new loopback
        # connections would otherwise stall whoever asks); past that a peer counts as unidentified.
        if used > self.lookups_per_s:
            return None
        uid = self._uid_of(where)
        with self._lock:
            self._uids[where] = (uid, now + UID_CACHE_S)
            self._uids.move_to_end(where)
            while len(self._uids) > 4096:
                self._uids.popitem(last=False)
        return uid

    def retry_after(self, peer: str) -> float:
        """Seconds ``peer`` must still wait before its token is looked at; 0 when it may try now."""
        with self._lock:
            if self._hosts.get(self._host(peer), 0) == 0:
                return 0.0
        key = self._key(peer)  # may read /proc: outside the lock
        now = self._clock()
        with self._lock:
            record = self._records.get(key)
            return max(0.0, record.until - now) if record is not None else 0.0

    def failed(self, peer: str) -> float:
        """Count a wrong token from ``peer``; returns the back-off it starts now (0 while failures are free)."""
        key = self._key(peer)
        now = self._clock()
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = _Record()
                self._hosts[key[0]] = self._hosts.get(key[0], 0) + 1
            self._records.move_to_end(key)
            record.failures += 1
            record.seen = now
            over = record.failures - self.free_failures - 1
            wait = 0.0 if over < 0 else min(self.max_s, self.base_s * 2**over)
            record.until = now + wait
            self._forget(now)
            return wait

    def succeeded(self, peer: str) -> None:
        """A right token from ``peer``: its failures are forgiven."""
        with self._lock:
            if self._hosts.get(self._host(peer), 0) == 0:
                return
        key = self._key(peer)
        with self._lock:
            if key in self._records:
                self._drop(key)

    def _drop(self, key: Any) -> None:
        del self._records[key]
        self._hosts[key[0]] -= 1
        if not self._hosts[key[0]]:
            del self._hosts[key[0]]

    def _forget(self, now: float) -> None:
        """Peers quiet for ``forget_s`` past their back-off, and the oldest past ``max_peers``."""
        while self._records:
            key, record = next(iter(self._records.items()))
            if len(self._records) <= self.max_peers and now - max(record.seen, record.until) < self.forget_s:
                break
            self._drop(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
