"""What reading shared-memory frames with ``preadv`` costs against reading them in place from a map.

    python -m bench.shm_read                 # 640x480, 1920x1080, 3840x2160; 30 interleaved rounds

The daemon copies each shared-memory frame out with ``os.preadv`` (server/shm.py):
a client may shrink its object at any time, and a mapped page past the new end
kills the reader with SIGBUS. This measures that copy, and the frame's whole
preprocessing (resize to 256, crop 224, normalize: SqueezeNet's), both ways:

  map    a memoryview slice of an mmap of the object, read in place by the resize (before issue 16)
  pread  a fresh bytearray filled by preadv, then the same preprocessing (now)

Rounds alternate the two, so noise on this shared machine hits both alike; the
table gives medians and the pread/map ratio of the whole preprocessing.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.preprocess import Preprocessor, RawImage
from edgeinfer.server.registry import get_spec

SIZES = ((480, 640), (1080, 1920), (2160, 3840))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # A 4K frame is 25 MB: over the default --max-frame-bytes, as a daemon serving 4K over shared memory sets it.
    limits = FrameLimits(max_frame_bytes=64 << 20)
    pre = Preprocessor(get_spec("squeezenet").preprocessing, device=torch.device("cpu"), limits=limits)
    print(
        f"{'frame':>10} {'copy map':>9} {'copy pread':>10} {'pre map':>8} {'pre pread':>9} {'ratio':>6}  (ms, medians)"
    )
    for h, w in SIZES:
        n = h * w * 3
        path = Path(f"/dev/shm/edgeinfer-shm-read-{os.getpid()}")
        path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
        fd = os.open(path, os.O_RDONLY)
        try:
            view = memoryview(mmap.mmap(fd, n, prot=mmap.PROT_READ))
            times: dict[str, list[float]] = {"copy_map": [], "copy_pread": [], "pre_map": [], "pre_pread": []}
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                frame_map = view[:n]  # in place: the "copy" is a slice
                t1 = time.perf_counter()
                pre(RawImage(h, w, frame_map))
                t2 = time.perf_counter()
                data = bytearray(n)
                os.preadv(fd, [data], 0)
                t3 = time.perf_counter()
                pre(RawImage(h, w, data))
                t4 = time.perf_counter()
                times["copy_map"].append(t1 - t0)
                times["pre_map"].append(t2 - t0)
                times["copy_pread"].append(t3 - t2)
                times["pre_pread"].append(t4 - t2)
            del frame_map
            view.release()
        finally:
            os.close(fd)
            path.unlink()
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"{w:>5}x{h:<4} {med['copy_map']:9.3f} {med['copy_pread']:10.3f} {med['pre_map']:8.2f} "
            f"{med['pre_pread']:9.2f} {med['pre_pread'] / med['pre_map']:6.2f}"
        )


if __name__ == "__main__":
    main()
