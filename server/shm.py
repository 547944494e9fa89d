"""Shared-memory frames: the same-host path that moves no pixels through gRPC.

A client on the daemon's host puts raw frames in a POSIX shared-memory object
(``/dev/shm/<key>``, what Python's ``multiprocessing.shared_memory`` and
``shm_open`` create), names it in the stream's config, and sends each frame as
an offset and a shape. The daemon maps the object read-only for the stream's
life and reads the pixels in place: the preprocessing's resize reads straight
from the client's memory, with no copy and no JPEG. This is Triton's
system-shared-memory idea, scoped to one stream so that nothing outlives it.

Contract (edgeinfer.proto): the client leaves a frame's bytes alone until that
frame's answer has arrived; every frame gets exactly one answer, so the answer
is the moment its slot is free again.

Linux only (``/dev/shm``), which is what the robot boards run.
"""

from __future__ import annotations

import mmap
import os
import re
import weakref
from pathlib import Path

from edgeinfer.server.errors import InvalidFrame, InvalidRequest, LimitExceeded, NotLocal, SharedMemoryNotFound
from edgeinfer.server.preprocess import RawImage

__all__ = ["SHM_ROOT", "SharedMemoryRegion", "check_local", "is_local_peer"]

SHM_ROOT = Path("/dev/shm")
# What shm_open accepts as one object name (a leading "/" and no other): no paths, no "..".
_KEY = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_LOCAL_PEERS = ("unix:", "ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.")


def is_local_peer(peer: str) -> bool:
    """True when a gRPC peer string (``context.peer()``) is on this host: a Unix socket or loopback."""
    return peer.startswith(_LOCAL_PEERS)


class SharedMemoryRegion:
    """One client's shared-memory object, mapped read-only for one stream."""

    def __init__(self, key: str, fd: int, buffer: memoryview) -> None:
        self.key = key
        self._fd = fd
        self._buffer = buffer
        weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, key: str, byte_size: int, *, max_bytes: int, root: Path = SHM_ROOT) -> SharedMemoryRegion:
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
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise SharedMemoryNotFound(
                f"no shared-memory object {key!r} on the daemon's host ({path} does not exist); "
                f"create it before opening the stream and keep it until the stream ends"
            ) from None
        except OSError as exc:
            raise SharedMemoryNotFound(f"cannot open shared-memory object {key!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < byte_size:
                raise InvalidRequest(
                    f"shared-memory object {key!r} has {size} bytes, fewer than shared_memory.byte_size {byte_size}"
                )
            mapped = mmap.mmap(fd, byte_size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        # Frames are memoryview slices of the map; the map closes when the last one is gone.
        return cls(key, fd, memoryview(mapped))

    @property
    def byte_size(self) -> int:
        return len(self._buffer)

    def image(self, offset: int, height: int, width: int, *, bgr: bool) -> RawImage:
        """A raw frame that reads the region in place (no copy)."""
        if height == 0 or width == 0:
            raise InvalidFrame(f"shared-memory frame must have a height and a width, got {height}x{width}")
        end = offset + height * width * 3
        if end > self.byte_size:
            raise InvalidFrame(
                f"shared-memory frame {height}x{width}x3 at offset {offset} ends at byte {end}, past the end of "
                f"region {self.key!r} ({self.byte_size} bytes)"
            )
        # Reading a mapped page past the end of a shrunk object kills the process (SIGBUS);
        # a client that truncates its object gets an error instead (one fstat, ~1 us).
        if (size := os.fstat(self._fd).st_size) < end:
            raise InvalidFrame(
                f"shared-memory object {self.key!r} shrank to {size} bytes while mapped; "
                f"keep it at its size until the stream ends"
            )
        return RawImage(height, width, self._buffer[offset:end], bgr=bgr)


def check_local(peer: str) -> None:
    if not is_local_peer(peer):
        raise NotLocal(
            f"shared-memory frames need a client on the daemon's host (a unix: target or loopback); "
            f"this stream comes from {peer}: send image.jpeg or image.raw instead"
        )
