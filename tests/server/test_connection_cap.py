"""The cap on connections per peer (issue 26 item 2), on plain sockets: no gRPC, loopback only.

Linux routes all of 127/8 to loopback, so a client bound to 127.0.0.2 and one bound to
127.0.0.3 are two peers on one host. The test process holds the listener and the accepted
ends, as the daemon does; the cap sees them through /proc/self/fd.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import stat
import sys
from collections.abc import Callable, Iterator

import pytest

from edgeinfer.server.connection_cap import ConnectionCap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")

CAP = 3


class Listener:
    """A listening socket and every connection it accepted, closed together."""

    def __init__(self, family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.accepted: list[socket.socket] = []

    def connect(self, source: str, target: str = "127.0.0.1", n: int = 1) -> list[socket.socket]:
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        out = []
        for _ in range(n):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.bind((source, 0))
            c.settimeout(5)
            c.connect((target, self.port))
            self.clients.append(c)
            self.accepted.append(self.sock.accept()[0])
            out.append(c)
        return out

    def close(self) -> None:
        for s in (*self.clients, *self.accepted, self.sock):
            s.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.close()


@pytest.fixture
def cap_of() -> Iterator[Callable[..., ConnectionCap]]:
    """ConnectionCap(...), closed after the test (it holds two descriptors)."""
    made: list[ConnectionCap] = []

    def make(*args: object, **kwargs: object) -> ConnectionCap:
        made.append(ConnectionCap(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for cap in made:
        cap.close()


def _ended(sock: socket.socket) -> bool:
    """Whether the other end shut the connection (EOF or reset), waiting at most 5 s."""
    sock.settimeout(5.0)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _still_open(socks: list[socket.socket]) -> bool:
    """None of ``socks`` has anything to read (an end, a reset) within a fifth of a second, all together."""
    readable, _, _ = select.select(socks, [], [], 0.2)
    return not readable


def test_a_peer_over_the_cap_loses_its_newest_connections_and_no_one_else_loses_any(
    listener: Listener, cap_of: Callable[..., ConnectionCap]
) -> None:
    closed: list[tuple[object, int]] = []
    cap = cap_of([[listener.port]], CAP, on_close=lambda peer, n: closed.append((peer, n)))
    early = listener.connect("127.0.0.2", n=CAP)
    other = listener.connect("127.0.0.3", n=CAP)
    assert cap.sweep() == 0  # at the cap is not over it
    late = listener.connect("127.0.0.2", n=2)
    assert cap.sweep() == 2
    assert closed == [("127.0.0.2", 2)] and cap.closed == 2
    assert [_ended(s) for s in late] == [True, True]
    assert _still_open(early + other)
    # The ones shut down are not counted again while their holder has not closed them.
    assert cap.sweep() == 0
    # The next one over is the newest again, not one the peer held before.
    newest = listener.connect("127.0.0.2")
    assert cap.sweep() == 1 and _ended(newest[0])
    assert _still_open(early)


def test_a_place_comes_back_when_a_connection_closes(listener: Listener, cap_of: Callable[..., ConnectionCap]) -> None:
    cap = cap_of([[listener.port]], CAP)
    held = listener.connect("127.0.0.2", n=CAP)
    assert cap.sweep() == 0
    held[0].close()
    listener.accepted[0].close()  # what gRPC does when its peer leaves
    assert cap.sweep() == 0
    listener.connect("127.0.0.2")
    assert cap.sweep() == 0  # back at the cap, not over it


def test_connections_to_ports_it_does_not_cap_are_left_alone(
    listener: Listener, cap_of: Callable[..., ConnectionCap]
) -> None:
    capped = Listener()
    try:
        cap = cap_of([[capped.port]], CAP)
        listener.connect("127.0.0.2", n=CAP + 2)
        assert cap.sweep() == 0
        assert _still_open(listener.clients)
    finally:
        capped.close()


def test_each_group_of_ports_is_counted_alone(listener: Listener, cap_of: Callable[..., ConnectionCap]) -> None:
    second = Listener()
    try:
        cap = cap_of([[listener.port], [second.port]], CAP)
        listener.connect("127.0.0.2", n=CAP)
        second.connect("127.0.0.2", n=CAP)
        assert cap.sweep() == 0  # CAP on each, 2 x CAP in all: each server's count is its own
    finally:
        second.close()


def test_ipv4_mapped_peers_count_as_the_ipv4_they_map_and_ipv6_loopback_is_a_peer_of_its_own(
    cap_of: Callable[..., ConnectionCap],
) -> None:
    dual = Listener(socket.AF_INET6, "::")
    try:
        cap = cap_of([[dual.port]], CAP)
        v4 = dual.connect("127.0.0.2", "127.0.0.1", n=CAP)  # seen as ::ffff:127.0.0.2
        v6 = dual.connect("::1", "::1", n=CAP)
        assert cap.sweep() == 0
        over = dual.connect("127.0.0.2", "127.0.0.1")
        assert cap.sweep() == 1 and _ended(over[0])
        assert _still_open(v4 + v6)
    finally:
        dual.close()


def test_the_daemon_s_own_client_sockets_and_its_listener_are_never_counted(
    listener: Listener, cap_of: Callable[..., ConnectionCap]
) -> None:
    # The client ends of these connections live in this process too, on other ports: only the accepted
    # ends (local port = the listener's) count, and the listener itself has no peer.
    cap = cap_of([[listener.port]], 1)
    listener.connect("127.0.0.2")
    assert cap.sweep() == 0


def test_a_descriptor_reused_since_the_listing_is_neither_touched_nor_leaked(
    listener: Listener, cap_of: Callable[..., ConnectionCap]
) -> None:
    cap = cap_of([[listener.port]], CAP)
    listener.connect("127.0.0.2")
    fd = listener.accepted[0].fileno()
    inode = os.fstat(fd).st_ino
    before = len(os.listdir("/proc/self/fd"))
    with cap._duplicate(fd, inode + 1) as sock:  # the number now holds another socket
        assert sock is None
    with cap._duplicate(fd, inode) as sock:
        assert sock is not None and sock.getpeername()[0] == "127.0.0.2"
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor more: the slot was reused
    assert not stat.S_ISSOCK(os.fstat(cap._slot).st_mode)  # and holds no connection open
    assert _still_open(listener.clients)


def test_a_flood_that_took_every_descriptor_is_still_cut_back(
    listener: Listener, cap_of: Callable[..., ConnectionCap]
) -> None:
    # The process at its descriptor limit (EMFILE), the state a connection flood drives a daemon to: the
    # cap can open neither /proc/self/fd nor a duplicate, and must still close the peer's surplus.
    cap = cap_of([[listener.port]], CAP)
    early = listener.connect("127.0.0.2", n=CAP)
    late = listener.connect("127.0.0.2", n=2)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        null = os.open(os.devnull, os.O_RDONLY)  # (none free, it would be this one: it stays open)
        filler.append(null)
        with contextlib.suppress(OSError):
            while len(filler) < highest + 8:  # every free number below the limit, and no more
                filler.append(os.dup(null))
        with pytest.raises(OSError):
            os.listdir("/proc/self/fd")  # every descriptor taken
        assert cap.sweep() == 2
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [_ended(s) for s in late] == [True, True]
    assert _still_open(early)
