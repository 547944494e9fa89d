"""Frame slots in shared memory: the same-host path that sends no pixels over gRPC.

For a robot whose camera and daemon share a board. The client creates one POSIX
shared-memory object (Python's ``multiprocessing.shared_memory``), cut into
equal slots; each frame is copied into a free slot (swapping BGR to RGB in the
same pass when OpenCV is there) and only its offset and shape travel on the
stream. A slot is free again when that frame's answer arrives: the daemon
answers every frame exactly once, in order, and never reads a frame after its
answer. When no slot is free, or a frame is larger than a slot, the frame goes
inline as raw bytes instead: slower, never lost, never blocking the camera.

The object is unlinked when the stream ends; the daemon's read-only mapping
(server/shm.py) goes away with its stream.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from multiprocessing import shared_memory

import numpy as np

from edgeinfer.client.frames import _check_array, raw_pixels
from edgeinfer.proto import edgeinfer_pb2 as pb

__all__ = ["DEFAULT_SLOTS", "SharedMemoryFrames"]

# Enough for the daemon's window under drop policy `all` (8 unanswered frames);
# under `latest` two or three are in flight.
DEFAULT_SLOTS = 8


class SharedMemoryFrames:
    """``slots`` frame slots of ``slot_bytes`` each, in one shared-memory object this client owns."""

    def __init__(self, slot_bytes: int, slots: int = DEFAULT_SLOTS) -> None:
        if slot_bytes <= 0 or slots <= 0:
            raise ValueError(f"need slot_bytes > 0 and slots > 0, got {slot_bytes} and {slots}")
        self.slot_bytes = slot_bytes
        self.slots = slots
        self._shm = shared_memory.SharedMemory(create=True, size=slot_bytes * slots)
        self._lock = threading.Lock()
        self._free = collections.deque(range(slots))
        self._in_flight: collections.deque[int | None] = collections.deque()  # per frame sent, in order
        self._closed = False
        self.sent_shared = 0
        self.sent_inline = 0  # no free slot, or a frame larger than a slot

    @property
    def region(self) -> pb.SharedMemoryRegion:
        return pb.SharedMemoryRegion(key="/" + self._shm.name, byte_size=self.slot_bytes * self.slots)

    def write(self, frame: np.ndarray | bytes, into: pb.Image, *, bgr: bool) -> bool:
        """Put the frame in a free slot and its handle in ``into``; False: send it inline. Once per frame, in order."""
        pixels = _check_array(frame) if isinstance(frame, np.ndarray) else None
        with self._lock:
            fits = pixels is not None and pixels.nbytes <= self.slot_bytes and not self._closed
            slot = self._free.popleft() if fits and self._free else None
            self._in_flight.append(slot)
        if slot is None:
            self.sent_inline += 1
            return False
        assert pixels is not None
        h, w, _ = pixels.shape
        offset = slot * self.slot_bytes
        dst = np.ndarray((h, w, 3), dtype=np.uint8, buffer=self._shm.buf, offset=offset)
        _, order = raw_pixels(pixels, bgr=bgr, out=dst)  # swap (if BGR) and copy in one pass
        del dst  # no view may outlive the map (close() would fail)
        self.sent_shared += 1
        handle = into.shared_memory
        handle.offset, handle.height, handle.width, handle.pixel_format = offset, h, w, order
        return True

    def answered(self) -> None:
        """The oldest unanswered frame got its answer: its slot (if it had one) is free."""
        with self._lock:
            slot = self._in_flight.popleft() if self._in_flight else None
            if slot is not None:
                self._free.append(slot)

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)

    def close(self) -> None:
        """Unmap and unlink. The daemon's own mapping stays valid until its stream ends."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(BufferError):  # a frame is being copied in now; the map goes with its last view
            self._shm.close()
        self._shm.unlink()
