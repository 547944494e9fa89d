"""A cap on the TCP connections one client address holds open: the newest over it are closed.

gRPC Python has no hook at accept (``grpc.max_allowed_incoming_connections`` caps the total
per listening address, and closes the next one as it is accepted), so the cap per peer is
kept from the other side: the daemon holds every connection's file descriptor. A sweep,
every ``interval`` seconds (``busy_interval`` while it keeps finding some to close), lists
this process's sockets (``/proc/self/fd``, an fstat each), reads each new one's two ends
once, from a duplicate of its descriptor, and groups the connections of each listener by
the address at the other end (an IPv4-mapped IPv6 address as the IPv4 it maps; loopback
counts like any other: a local user is a peer too). Past ``per_peer``, the peer's newest
connections are shut down (``shutdown(SHUT_RDWR)`` on a duplicate): gRPC's poller sees
the connection end, fails its calls and frees it, as for a client that went away.

The sweep runs on a thread of its own, not on the event loop: a sweep is a few syscalls per
socket, each of which lets the GIL go, and under a flood of reconnects (bench/doors.py conns,
~5,000 a second) sweeps on the loop took 46-79 ms each and health p99 went to 124-164 ms; on
a thread of their own the loop runs between those syscalls (health p99 46-49 ms). Measured
on the 2-core dev host: a sweep took 0.12 ms with the daemon's 16 descriptors and 1.8 ms
with 976 (480 connections and their client ends in one process).

Why not /proc/net/tcp, which names each connection's peer and inode in one read: it walks
the kernel's whole established hash however few sockets are in it (10.7 ms for both tables
here, with 13 lines in them). Why not an asyncio TCP front that accepts and proxies to an
internal gRPC listener: it cost 175-275 us of CPU per frame on loopback, and every call would
reach gRPC from the proxy's address, losing the peer that shared memory (server/peers.py)
and the token gate's back-off are keyed on.

Every decision is made on a duplicate of the descriptor whose inode was checked, so a
descriptor number gRPC closed and reused in between is never the one shut down. The duplicate
is made with ``dup2()`` onto a descriptor the cap holds from the start, and the listing falls
back to every number below the limit: neither needs a free descriptor, because a flood that has
taken every one (the process at ``ulimit -n``) is when the cap is needed. With ``dup()`` and
``listdir()`` the cap went blind there, a sweep finding nothing: a daemon at ``ulimit -n 1024``,
flooded by two peers (127.0.0.2 and ::1, 600 connections each), closed 9,343 of their connections
in 20 s; with the slot, 188,193 (bench/results/doors.md, 2026-12-07 probe). Unix-socket
listeners are not capped (a local socket's peer has no address; its folder's permissions
decide who connects, server/peers.py). With ``--workers`` each worker counts its own
connections. A reconnect flood still holds places between sweeps: only a filter at accept
(iptables' connlimit) stops that. Nothing here knows about gRPC.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

__all__ = ["Connection", "ConnectionCap"]

log = logging.getLogger(__name__)

FD_DIR = "/proc/self/fd"
MAX_SCAN = 1 << 20  # the kernel's default fs.nr_open: descriptors looked at when the folder cannot be opened
LOG_EVERY_S = 60.0  # at most one line per peer this often: a flood must not flood the log too


@dataclass(frozen=True)
class Connection:
    """A connection accepted on one of the capped listeners."""

    peer: str  # the address at the other end, as the kernel prints it; IPv4-mapped ones as the IPv4
    group: int  # which listener group (the daemon's ports, its health port): each is capped alone
    seen: int  # the sweep that first saw it: a later sweep's are newer


def _peer(address: str) -> str:
    """``getpeername()``'s host: ``::ffff:127.0.0.2`` is ``127.0.0.2``, a scope (``%eth0``) is dropped."""
    address = address.split("%")[0]
    return address[7:] if address.startswith("::ffff:") and "." in address else address


class ConnectionCap:
    """Keeps each peer at ``per_peer`` connections or fewer on each group of listening ports."""

    def __init__(
        self,
        groups: Sequence[Collection[int]],
        per_peer: int,
        *,
        interval: float = 0.25,
        busy_interval: float = 0.02,
        on_close: Callable[[str, int], None] | None = None,
    ) -> None:
        """``groups``: TCP ports whose connections count together (one server's). ``on_close(peer, n)``
        is called after a sweep closed ``n`` of ``peer``'s connections (metrics)."""
        self.per_peer = per_peer
        self.interval = interval
        self.busy_interval = busy_interval
        self.on_close = on_close
        self._group = {port: g for g, ports in enumerate(groups) for port in ports}
        # inode -> the connection it is, or None for any other socket (client sockets, listeners, Unix).
        self._known: dict[int, Connection | None] = {}
        self._shut: set[int] = set()  # shut down, not yet closed by gRPC: no longer counted
        self._sweeps = 0
        self._logged: dict[str, float] = {}
        self.closed = 0  # connections closed since start
        # Held until close(): _slot is where each connection's duplicate is made (dup2 needs no free
        # descriptor), pointed back at _null after each use so that it never holds a connection open.
        self._null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._slot = os.dup(self._null)

    def close(self) -> None:
        """Give back the two descriptors it holds; sweeps after this close nothing."""
        slot, self._slot = self._slot, -1
        if slot >= 0:
            os.close(slot)
            os.close(self._null)

    def sweep(self) -> int:
        """One pass: close what is over the cap now; returns how many were closed."""
        if self._slot < 0:  # closed: its number may be someone else's now
            return 0
        self._sweeps += 1
        sockets = self._sockets()
        known: dict[int, Connection | None] = {}
        by_peer: dict[tuple[int, str], list[tuple[int, int]]] = {}
        for inode, fd in sockets.items():
            conn = self._known[inode] if inode in self._known else self._inspect(fd, inode)
            if conn is False:  # the descriptor changed under us: look again next sweep
                continue
            known[inode] = conn
            if conn is not None and inode not in self._shut:
                by_peer.setdefault((conn.group, conn.peer), []).append((conn.seen, inode))
        self._known = known
        self._shut &= known.keys()
        closed = 0
        for (_, peer), conns in by_peer.items():
            if len(conns) <= self.per_peer:
                continue
            conns.sort()
            shut = [inode for _, inode in conns[self.per_peer :] if self._shut_down(sockets[inode], inode)]
            if shut:
                closed += len(shut)
                self._report(peer, len(shut), len(conns))
        self.closed += closed
        return closed

    def run(self, stop: threading.Event) -> None:
        """Sweep until ``stop`` is set: every ``interval`` seconds, or ``busy_interval`` while a flood goes on."""
        closed = 0
        while not stop.wait(self.busy_interval if closed else self.interval):
            try:
                closed = self.sweep()
            except Exception as exc:  # never let the cap end with an error: the next sweep tries again
                log.warning("the connection cap's sweep failed: %r", exc)
                closed = 0

    def start(self) -> Callable[[], None]:
        """Sweep on a thread of its own; returns the function that stops it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="connection-cap", daemon=True)
        thread.start()

        def stopped() -> None:
            stop.set()
            thread.join(5)
            if not thread.is_alive():  # a sweep still running would dup2 onto a number closed under it
                self.close()

        return stopped

    def _sockets(self) -> dict[int, int]:
        """inode -> descriptor for every socket this process holds."""
        out = {}
        names: list[str] | range
        try:
            names = os.listdir(FD_DIR)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return out
            # No descriptor to read the folder with: at EMFILE every number below the limit is open.
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            names = range(MAX_SCAN if limit < 0 or limit > MAX_SCAN else limit)
        for name in names:
            try:
                st = os.fstat(int(name))  # the descriptor itself: no path to resolve, unlike readlink
            except (OSError, ValueError):  # closed since the listing
                continue
            if stat.S_ISSOCK(st.st_mode):
                out[st.st_ino] = int(name)
        return out

    def _inspect(self, fd: int, inode: int) -> Connection | bool | None:
        """What the socket at ``fd`` is; False when ``fd`` no longer holds ``inode``."""
        with self._duplicate(fd, inode) as sock:
            if sock is None:
                return False
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                return None
            try:
                group = self._group.get(sock.getsockname()[1])
                if group is None:
                    return None
                peer = sock.getpeername()  # a listener has none (ENOTCONN)
            except OSError:
                return None
            return Connection(_peer(peer[0]), group, self._sweeps)

    def _shut_down(self, fd: int, inode: int) -> bool:
        with self._duplicate(fd, inode) as sock:
            if sock is None:
                return False
            with contextlib.suppress(OSError):  # the client left first
                sock.shutdown(socket.SHUT_RDWR)
            self._shut.add(inode)
            return True

    @contextlib.contextmanager
    def _duplicate(self, fd: int, inode: int):  # type: ignore[no-untyped-def]
        """A socket object on a duplicate of ``fd`` if it still is ``inode`` (else None), made in ``_slot``.

        The slot is pointed back at /dev/null on every path: a duplicate left there would hold its
        connection open after gRPC closed it (and, in a flood of reconnects, reuse of descriptor
        numbers is common).
        """
        try:
            os.dup2(fd, self._slot, inheritable=False)
        except OSError:  # closed since the listing
            yield None
            return
        sock = None
        try:
            if os.fstat(self._slot).st_ino == inode:
                # Touches neither O_NONBLOCK nor anything else gRPC set: it shares only the open socket.
                sock = socket.socket(fileno=self._slot)
        except OSError:
            pass
        try:
            yield sock
        finally:
            if sock is not None:
                sock.detach()  # the slot is the cap's: not closed, only pointed away
            os.dup2(self._null, self._slot, inheritable=False)

    def _report(self, peer: str, closed: int, had: int) -> None:
        if self.on_close is not None:
            self.on_close(peer, closed)
        now = time.monotonic()
        if now - self._logged.get(peer, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        if len(self._logged) > 1024:  # peers not heard from for a while are forgotten
            self._logged = {p: t for p, t in self._logged.items() if now - t < LOG_EVERY_S}
        self._logged[peer] = now
        log.warning(
            "closed %d connection(s) from %s: it had %d open, over --max-connections-per-peer %d "
            "(one line per peer a minute)",
            closed,
            peer,
            had,
            self.per_peer,
        )
