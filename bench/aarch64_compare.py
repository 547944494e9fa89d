"""The same photo crops through two daemons (x86 and emulated aarch64): do they answer the same top-5?

    python -m bench.aarch64_compare TARGET_A TARGET_B [--frames 8] [--model squeezenet1_0]

Per frame: top-1 equal, top-5 equal in order, top-5 equal as a set, and where the order differs, how
far apart the swapped classes' probabilities are (a near-tie that two CPUs' int8 kernels may order
either way, or a real difference). Prints one line per frame and a summary; --json for the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2

from bench.board import photo_frames
from edgeinfer.client import EdgeClient

__all__ = ["answers", "compare", "main"]


def answers(target: str, model: str, jpegs: list[bytes], timeout: float) -> list[list[tuple[int, float]]]:
    with EdgeClient(target, timeout=timeout) as client:
        client.wait_ready(model, precision="int8", timeout=timeout)
        out = []
        for r in client.stream(jpegs, model, precision="int8", drop_policy="all", top_k=5, resize="off"):
            assert r.prediction is not None, r
            out.append([(c.index, c.probability) for c in r.prediction.classes])
    return out


def compare(a: list[list[tuple[int, float]]], b: list[list[tuple[int, float]]]) -> dict:
    rows = []
    for x, y in zip(a, b, strict=True):
        ix, iy = [c for c, _ in x], [c for c, _ in y]
        px = dict(x)
        # where the order differs: the largest probability gap (on A) between classes B ranks the other way
        gap = max(
            (
                abs(px[c1] - px[c2])
                for i, c1 in enumerate(iy)
                for c2 in iy[i + 1 :]
                if c1 in px and c2 in px and ix.index(c1) > ix.index(c2)
            ),
            default=0.0,
        )
        rows.append(
            {
                "top1_equal": ix[0] == iy[0],
                "top5_equal_in_order": ix == iy,
                "top5_equal_as_set": set(ix) == set(iy),
                "largest_swapped_gap": gap,
                "max_abs_probability_diff": max(abs(p - q) for (_, p), (_, q) in zip(x, y, strict=True)),
            }
        )
    n = len(rows)
    return {
        "frames": n,
        "top1_equal": sum(r["top1_equal"] for r in rows),
        "top5_equal_in_order": sum(r["top5_equal_in_order"] for r in rows),
        "top5_equal_as_set": sum(r["top5_equal_as_set"] for r in rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target_a")
    p.add_argument("target_b")
    p.add_argument("--model", default="squeezenet1_0")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in photo_frames(args.frames)]
    t0 = time.perf_counter()
    a = answers(args.target_a, args.model, jpegs, args.timeout)
    t1 = time.perf_counter()
    b = answers(args.target_b, args.model, jpegs, args.timeout)
    t2 = time.perf_counter()
    result = compare(a, b) | {"seconds_per_frame": [(t1 - t0) / len(jpegs), (t2 - t1) / len(jpegs)]}
    for i, (r, x, y) in enumerate(zip(result["rows"], a, b, strict=True)):
        print(
            f"frame {i}: A {[c for c, _ in x]} B {[c for c, _ in y]} top-1 {'=' if r['top1_equal'] else 'DIFFERS'}, "
            f"top-5 {'same order' if r['top5_equal_in_order'] else 'same set' if r['top5_equal_as_set'] else 'DIFFER'}"
            f", largest swapped gap {r['largest_swapped_gap']:.2e}, max |p diff| {r['max_abs_probability_diff']:.2e}"
        )
    n = result["frames"]
    print(
        f"{n} frames: top-1 equal {result['top1_equal']}/{n}, top-5 same order {result['top5_equal_in_order']}/{n}, "
        f"same set {result['top5_equal_as_set']}/{n}; s/frame A {result['seconds_per_frame'][0]:.3f}, "
        f"B {result['seconds_per_frame'][1]:.3f}"
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
