"""Does nvJPEG on the model's own CUDA stream corrupt a running forward pass on this GPU?

    python -m bench.nvjpeg_hazard          (bench/gpu_check.sh runs it)

The upstream hazard (pytorch/vision#9606): nvJPEG's hardware decoder (A100, H100, H200) can
write its output before work queued on the caller's stream has run, and PyTorch's allocator
hands out blocks freed on a stream whose reads are still queued. The daemon's Preprocessor
decodes on a CUDA stream of its own (tests/server/test_cuda.py proves the guarded path is
clean); this probe runs a bare ``decode_jpeg`` on the model's stream and reports whether the
hazard showed. It is a measurement, not a test: the hazard shows on some GPUs some of the time.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torchvision

from edgeinfer.media.sample import synthetic_frame

__all__ = ["forward_while_decoding", "main"]


def _jpeg(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def forward_while_decoding(decode: Callable[[bytes], torch.Tensor], rounds: int = 40) -> tuple[int, int, int]:
    """Run a model over and over on this thread's stream while 3 threads decode JPEGs.

    Returns (forward passes that differ from the first one, decodes that differ
    from a serial decode of the same frame, decodes). Both should be 0 differences:
    the model and input never change, and neither do the frames.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50().cuda().half().eval()
    x = torch.randn(16, 3, 224, 224, device="cuda", dtype=torch.float16)
    frames = [_jpeg(synthetic_frame(i, 640, 480)) for i in range(4)]
    with torch.inference_mode():
        reference = model(x).float().cpu()
        expected = [decode(f).float().cpu() for f in frames]
    stop = threading.Event()
    decoded: list[bool] = []

    def decode_loop() -> None:
        with torch.inference_mode():
            while not stop.is_set():
                for i, f in enumerate(frames):
                    decoded.append(torch.allclose(decode(f).float().cpu(), expected[i], atol=1e-3))

    threads = [threading.Thread(target=decode_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with torch.inference_mode():
            outs = [model(x) for _ in range(rounds)]  # queued back to back, activations freed as they go
            torch.cuda.synchronize()
    finally:
        stop.set()
        for t in threads:
            t.join()
    wrong = sum(not torch.allclose(o.float().cpu(), reference, atol=1e-2, rtol=0) for o in outs)
    return wrong, decoded.count(False), len(decoded)


def main() -> int:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not torch.cuda.is_available():
        print("nvjpeg_hazard: no CUDA device", file=sys.stderr)
        return 2

    def bare(data: bytes) -> torch.Tensor:
        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda")

    wrong, bad_decodes, decodes = forward_while_decoding(bare)
    result = {"gpu": torch.cuda.get_device_name(), "wrong_forward_passes": wrong, "bad_decodes": bad_decodes}
    result |= {"decodes": decodes, "hazard_showed": bool(wrong or bad_decodes)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
