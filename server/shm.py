"""Shared-memory frames: the same-host path that moves no pixels through gRPC.

A client on the daemon's host puts raw frames in a POSIX shared-memory object
(``/dev/shm/<key>``, what Python's ``multiprocessing.shared_memory`` and
``shm_open`` create), names it in the stream's config, and sends each frame as
an offset and a shape. The daemon opens the object read-only for the stream's
life and copies each frame out of it when the frame arrives: no pixels through
gRPC, no JPEG. This is Triton's system-shared-memory idea, scoped to one stream
so that nothing outlives it.

Contract (edgeinfer.proto): the client leaves a frame's bytes alone until that
frame's answer has arrived; every frame gets exactly one answer, so the answer
is the moment its slot is free again.

Linux only (``/dev/shm``), which is what the robot boards run.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import weakref
from pathlib import Path
from urllib.parse import unquote

from edgeinfer.server.errors import InvalidFrame, InvalidRequest, LimitExceeded, NotLocal, SharedMemoryNotFound
from edgeinfer.server.frames import RawImage
from edgeinfer.server.peers import Endpoint, parse_peer, private_unix_sockets, tcp_peer_uid

__all__ = ["SHM_ROOT", "SharedMemoryRegion", "check_local", "is_local_peer", "peer_uid"]

SHM_ROOT = Path("/dev/shm")
# What shm_open accepts as one object name (a leading "/" and no other): no paths, no "..".
_KEY = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


def is_local_peer(peer: str) -> bool:
    """True when a gRPC peer string (``context.peer()``) is on this host: a Unix socket or a loopback address.

    Read from the parsed address (grpcio 1.85 percent-encodes it: ``ipv6:%5B::1%5D:54142``), not a prefix.
    """
    where = parse_peer(peer)
    return where == "unix" or (isinstance(where, Endpoint) and where.ip.is_loopback)


class SharedMemoryRegion:
    """One client's shared-memory object, opened read-only for one stream.

    The client owns the object and may shrink it, replace it or swap its name for
    something else at any moment. So only a regular file is opened, never through a
    link and never blocking (a FIFO would block an open for reading; a device could
    do anything), and frames are copied out with ``preadv`` rather than read from a
    map: a mapped page past the end of a shrunk object kills the reading process
    with SIGBUS, where ``preadv`` returns short and the frame gets INVALID_ARGUMENT.
    The copy costs what reading the frame once costs (bench/shm_read.py).
    """

    def __init__(self, key: str, fd: int, byte_size: int) -> None:
        self.key = key
        self._fd = fd
        self._byte_size = byte_size
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(
        cls, key: str, byte_size: int, *, max_bytes: int, root: Path = SHM_ROOT, owner_uid: int | None = None
    ) -> SharedMemoryRegion:
        """``owner_uid``: the client's user id when it is known; an object of another user is refused."""
        if not _KEY.fullmatch(key):
            raise InvalidRequest(
                f"shared_memory.key {key!r} is not a POSIX shared-memory name: one name such as "
                f"'/edgeinfer-frames' (letters, digits, '_', '.', '-'), as given to shm_open"
            )
        if byte_size == 0:
            raise InvalidRequest("shared_memory.byte_size must be the size of the region in bytes, got 0")
        if byte_size > max_bytes:
            raise LimitExceeded(
                f"shared-memory region of {byte_size} bytes is over this daemon's limit of {max_bytes} "
                f"(--max-shm-bytes); use fewer or smaller frame slots"
            )
        path = root / key.lstrip("/")
        try:
            # Look before opening: opening a device or a FIFO can itself do something. The
            # fstat below checks again what was opened, should the name change in between.
            _check_regular(key, os.lstat(path).st_mode)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SharedMemoryNotFound(
                f"no shared-memory object {key!r} on the daemon's host ({path} does not exist); "
                f"create it before opening the stream and keep it until the stream ends"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidRequest(
                    f"shared-memory object {key!r} is a symbolic link; name the object itself"
                ) from None
            raise SharedMemoryNotFound(f"cannot open shared-memory object {key!r}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            _check_regular(key, st.st_mode)
            if owner_uid is not None and st.st_uid != owner_uid:
                raise InvalidRequest(
                    f"shared-memory object {key!r} belongs to user {st.st_uid}, not to this stream's client "
                    f"(user {owner_uid}); create the object as the user that opens the stream"
                )
            if st.st_size < byte_size:
                raise InvalidRequest(
                    f"shared-memory object {key!r} has {st.st_size} bytes, "
                    f"fewer than shared_memory.byte_size {byte_size}"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(key, fd, byte_size)

    @property
    def byte_size(self) -> int:
        return self._byte_size

    def close(self) -> None:
        self._closer()

    def image(self, offset: int, height: int, width: int, *, bgr: bool) -> RawImage:
        """A raw frame copied out of the region (the client may change the object at any time)."""
        if height == 0 or width == 0:
            raise InvalidFrame(f"shared-memory frame must have a height and a width, got {height}x{width}")
        n = height * width * 3
        end = offset + n
        if end > self._byte_size:
            raise InvalidFrame(
                f"shared-memory frame {height}x{width}x3 at offset {offset} ends at byte {end}, past the end of "
                f"region {self.key!r} ({self._byte_size} bytes)"
            )
        data = bytearray(n)
        try:
            got = os.preadv(self._fd, [data], offset)
        except OSError as exc:
            raise InvalidFrame(f"shared-memory object {self.key!r} could not be read: {exc.strerror}") from None
        if got != n:
            raise InvalidFrame(
                f"shared-memory object {self.key!r} shrank to {os.fstat(self._fd).st_size} bytes while the stream "
                f"was open (frame ends at byte {end}); keep it at its size until the stream ends"
            )
        return RawImage(height, width, data, bgr=bgr)


def _check_regular(key: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = (
            "symbolic link"
            if stat.S_ISLNK(mode)
            else "directory"
            if stat.S_ISDIR(mode)
            else "FIFO"
            if stat.S_ISFIFO(mode)
            else "socket"
            if stat.S_ISSOCK(mode)
            else "device"
        )
        raise InvalidRequest(
            f"shared-memory object {key!r} is a {kind}, not a shared-memory object; "
            f"create it with shm_open or multiprocessing.shared_memory"
        )


def peer_uid(peer: str) -> int:
    """The user id of the same-host client at the other end of ``peer`` (``context.peer()``), or NotLocal.

    From the connection's own 4-tuple for loopback TCP, from the socket's permissions for a Unix
    socket (server/peers.py); a client the daemon cannot identify gets no shared memory.
    """
    where = parse_peer(peer)
    if where == "unix":
        private, open_to_others = private_unix_sockets()
        if not private:
            which = f"{', '.join(open_to_others)} admits other users" if open_to_others else "its socket was not found"
            raise NotLocal(
                f"shared-memory frames over a Unix socket need one only the daemon's user can connect to "
                f"(the daemon cannot tell which user connects): {which}; make it private (no write permission "
                f"for others, or a folder only the daemon's user may enter), or send raw frames (--encoding raw)"
            )
        return os.geteuid()
    uid = tcp_peer_uid(where) if isinstance(where, Endpoint) and is_local_peer(peer) else None
    if uid is None:
        raise NotLocal(
            f"cannot tell which local user this stream ({unquote(peer)}) comes from, so shared memory is "
            f"refused; send raw frames instead (edgeclient --encoding raw)"
        )
    return uid


def check_local(peer: str) -> None:
    if not is_local_peer(peer):
        raise NotLocal(
            f"shared-memory frames need a client on the daemon's host (a unix: target or loopback); "
            f"this stream comes from {peer}: send JPEG or raw frames instead (edgeclient --encoding jpeg or raw)"
        )
