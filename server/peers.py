"""Who is at the other end of a call: the peer's address from gRPC, and its user id from the kernel.

A same-host client may name a shared-memory object for its frames; the daemon opens it only when it
belongs to the user at the other end of the connection (server/shm.py). That user is found from the
connection's own 4-tuple in the kernel's socket tables, never from a port alone (issue 26: looking a
uid up as "the first /proc/net/tcp6 entry with the peer's port" found the daemon's own socket, or any
other user's, and 13 of 20 tries from ``[::ffff:127.0.0.X]`` read another user's object):

1. the daemon's end: among the sockets this process holds (``/proc/self/fd``), the established one
   whose remote end is the peer's address and port; its local end is the address the peer dialled;
2. the peer's end: the established entry whose local end is the peer and whose remote end is exactly
   that address; its uid column is the client's user.

Addresses are compared as addresses, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) as the IPv4 it maps, since
one end of a loopback connection may be in ``tcp`` and the other in ``tcp6``. Anything short of exactly
one match on each side is "cannot tell", and a peer the daemon cannot identify gets no shared memory.

Unix sockets: gRPC Python does not expose SO_PEERCRED, so the user cannot be read off the connection.
The daemon can still tell when only its own user can connect: every Unix socket it listens on is
writable by its owner alone (connecting needs write permission) or sits in a folder only its owner may
enter. Then the peer is that user (or root); otherwise shared memory over a Unix socket is refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import struct
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Endpoint",
    "SocketEntry",
    "connection_uid",
    "listening_unix_paths",
    "own_socket_inodes",
    "parse_peer",
    "parse_tcp_table",
    "private_unix_sockets",
    "tcp_peer_uid",
]

ESTABLISHED = 0x01
_LISTENING_UNIX = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix's Flags column
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """One end of a TCP connection; an IPv4-mapped IPv6 address is kept as the IPv4 it maps."""

    ip: IP
    port: int

    @classmethod
    def of(cls, ip: IP, port: int) -> Endpoint:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(ip, port)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class SocketEntry:
    """A line of /proc/net/tcp or tcp6."""

    local: Endpoint
    remote: Endpoint
    state: int
    uid: int
    inode: int


def parse_peer(peer: str) -> Endpoint | str | None:
    """gRPC's ``context.peer()``: an Endpoint for TCP, ``"unix"`` for a Unix socket, None if unreadable.

    grpcio 1.85 percent-encodes the address (``ipv6:%5B::1%5D:54142``); older releases did not.
    """
    text = urllib.parse.unquote(peer)
    if text.startswith(("unix:", "unix-abstract:")):
        return "unix"
    m = re.fullmatch(r"ipv4:(\d+\.\d+\.\d+\.\d+):(\d+)|ipv6:\[([0-9A-Fa-f:.%\w]+)\]:(\d+)", text)
    if m is None:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3).split("%")[0], m.group(4))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return Endpoint.of(ip, int(port)) if 0 < int(port) < 65536 else None


def _address(hex_text: str) -> IP:
    # The kernel prints each 32-bit word of the address as the native-endian integer it is in memory.
    words = [int(hex_text[i : i + 8], 16) for i in range(0, len(hex_text), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def _endpoint(field: str) -> Endpoint:
    address, port = field.split(":")
    return Endpoint.of(_address(address), int(port, 16))


def parse_tcp_table(text: str) -> list[SocketEntry]:
    """The entries of a /proc/net/tcp or tcp6 text; lines that do not parse are skipped."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        try:
            local, remote = _endpoint(fields[1]), _endpoint(fields[2])
            out.append(SocketEntry(local, remote, int(fields[3], 16), int(fields[7]), int(fields[9])))
        except (IndexError, ValueError, struct.error):
            continue
    return out


def connection_uid(
    peer: Endpoint, entries: Iterable[SocketEntry], own_inodes: set[int] | Callable[[], set[int]] | None
) -> int | None:
    """The uid of the client at ``peer`` on a connection this process accepted; None unless exactly one fits.

    ``own_inodes``: this process's socket inodes (or a function that lists them); None takes a single
    established entry whose remote end is ``peer`` as the daemon's without asking (the token gate's
    cheap key: one connection end has one owner), and still refuses to choose between several.
    """
    entries = [e for e in entries if e.state == ESTABLISHED]
    ours = [e for e in entries if e.remote == peer]
    if own_inodes is not None and ours:
        inodes = own_inodes() if callable(own_inodes) else own_inodes
        ours = [e for e in ours if e.inode in inodes]
    if len(ours) != 1:
        return None
    theirs = [e for e in entries if e.local == peer and e.remote == ours[0].local]
    return theirs[0].uid if len(theirs) == 1 else None


def own_socket_inodes(fd_dir: Path = Path("/proc/self/fd")) -> set[int]:
    """The inodes of the sockets this process holds open."""
    inodes = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def tcp_peer_uid(peer: Endpoint, net: Path = Path("/proc/self/net"), *, verify: bool = True) -> int | None:
    """The uid of the local client at ``peer`` (a loopback connection to this process), or None.

    Only the lines that carry the peer's port are parsed (the tables list every socket of the host).
    ``verify=False`` skips listing this process's sockets when one entry alone fits (see connection_uid).
    """
    if not sys.platform.startswith("linux"):
        return None
    needle = f":{peer.port:04X} "
    entries = []
    for table in ("tcp", "tcp6"):
        lines = [line for line in _read(net / table).splitlines()[1:] if needle in line]
        entries += parse_tcp_table("\n".join(["", *lines]))
    return connection_uid(peer, entries, own_socket_inodes if verify else None)


def listening_unix_paths(text: str, own_inodes: set[int]) -> list[str]:
    """Paths of the Unix sockets in a /proc/net/unix text that this process listens on (abstract ones as '@...')."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        try:
            flags, inode = int(fields[3], 16), int(fields[6])
        except (IndexError, ValueError):
            continue
        if flags & _LISTENING_UNIX and inode in own_inodes:
            out.append(fields[7] if len(fields) > 7 else "@")
    return out


def _only_owner_can_connect(path: str, euid: int) -> bool:
    """True when no user but ``euid`` (and root) can connect to the socket at ``path``."""
    if path.startswith("@"):  # abstract: no file, no permissions; any local user can connect
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == euid and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    folder = Path(path).parent
    while True:  # or a folder on the way that only the owner may enter
        try:
            fst = os.stat(folder)
        except OSError:
            return False
        if fst.st_uid == euid and not fst.st_mode & (stat.S_IXGRP | stat.S_IXOTH):
            return True
        if folder == folder.parent:
            return False
        folder = folder.parent


def private_unix_sockets(net: Path = Path("/proc/self/net")) -> tuple[bool, list[str]]:
    """(whether every Unix socket this process listens on admits only its own user, the ones that do not)."""
    paths = listening_unix_paths(_read(net / "unix"), own_socket_inodes())
    euid = os.geteuid()
    open_to_others = [p for p in paths if not _only_owner_can_connect(p, euid)]
    return bool(paths) and not open_to_others, open_to_others
