"""frame_cost's client process (no torch): it streams a folder of JPEGs when the driver asks, and
the client library's own per-frame cost measured against an in-process stub."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL, PRECISION = "squeezenet1_0", "int8"


# --- the client process (no torch) ----------------------------------------------------------


def read_folder(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]


def client_main(argv: list[str]) -> int:
    """``client``: one line per command on stdin ("throughput N", "latency N", "cost N", "quit"),
    one JSON line per answer on stdout. Frames cycle through the folder."""
    p = argparse.ArgumentParser(prog="frame_cost client")
    p.add_argument("--target", required=True)
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--precision", default=PRECISION)
    args = p.parse_args(argv)
    import grpc

    from edgeinfer.client import EdgeClient
    from edgeinfer.client.api import channel_options

    jpegs = read_folder(args.folder)
    channel = grpc.insecure_channel(args.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=120)
    client = EdgeClient(args.target, timeout=120, channel=channel)
    next_frame = 0

    def frames(n: int) -> list[bytes]:
        nonlocal next_frame
        out = [jpegs[(next_frame + i) % len(jpegs)] for i in range(n)]
        next_frame += n
        return out

    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "quit":
            break
        n = int(rest[0])
        if cmd == "throughput":
            answer = _throughput(client, frames(n), args.model, args.precision)
        elif cmd == "latency":
            answer = _latency(client, frames(n), args.model, args.precision)
        elif cmd == "cost":
            answer = library_cost(frames(n))
        else:
            answer = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(answer), flush=True)
    client.close()
    return 0


def _throughput(client: Any, frames: list[bytes], model: str, precision: str) -> dict:
    """Frames back to back; the rate from the first answer to the last (the stream's start left out)."""
    first = None
    answered, stages = 0, {"inference": [], "decode": [], "preprocess": [], "queue": [], "total": []}
    stages |= {"batch": [], "inference_per_frame": []}  # a backlog runs as batches: the forward pass, shared
    for r in client.stream(frames, model, precision=precision, drop_policy="all"):
        assert r.prediction is not None, r
        if first is None:
            first = time.perf_counter()
            continue
        answered += 1
        t = r.prediction.timings
        for k in ("inference", "decode", "preprocess", "queue", "total"):
            stages[k].append(getattr(t, f"{k}_ms"))
        batch = max(1, r.prediction.batch_size)
        stages["batch"].append(batch)
        stages["inference_per_frame"].append(t.inference_ms / batch)
    assert first is not None and answered == len(frames) - 1, "one answer per frame"
    return {"frames": answered, "seconds": time.perf_counter() - first, "stages": stages}


def _latency(client: Any, frames: list[bytes], model: str, precision: str) -> dict:
    """One frame in flight at a time: each frame is sent once the previous one is answered."""
    answered = threading.Event()

    def one_at_a_time() -> Iterator[bytes]:
        for f in frames:
            answered.clear()
            yield f
            answered.wait(30)

    lat, inference = [], []
    for r in client.stream(one_at_a_time(), model, precision=precision, drop_policy="all"):
        answered.set()
        assert r.prediction is not None, r
        lat.append(r.latency_ms)
        inference.append(r.prediction.timings.inference_ms)
    assert len(lat) == len(frames), "one answer per frame"
    return {"latencies_ms": lat, "inference_ms": inference}


def canned_response(sequence: int = 0) -> Any:
    """A StreamResponse as the daemon writes one for int8 SqueezeNet top-5."""
    from edgeinfer.proto import edgeinfer_pb2 as pb

    r = pb.StreamResponse(sequence=sequence, capture_time_ns=time.time_ns())
    for i in range(5):
        r.prediction.classes.add(index=i * 97, label=f"class label number {i}", probability=0.2 - i * 0.01)
    t = r.prediction.timings
    t.queue_ms, t.decode_ms, t.preprocess_ms, t.inference_ms, t.total_ms = 0.05, 0.4, 0.3, 2.0, 2.9
    r.prediction.model, r.prediction.precision, r.prediction.device, r.prediction.batch_size = MODEL, "int8", "cpu", 1
    return r


class _InstantCall:
    """Stands in for the stream call gRPC returns: takes each request the library builds, serializes it
    (as gRPC's Python layer does), and answers it at once with a response parsed from bytes."""

    def __init__(self, requests: Iterator[Any], timing: dict[str, float]) -> None:
        from edgeinfer.proto import edgeinfer_pb2 as pb

        self._requests = requests
        self._parse = pb.StreamResponse.FromString
        self._answer = canned_response()
        self._timing = timing
        next(requests).SerializeToString()  # the config

    def __iter__(self) -> _InstantCall:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        request = next(self._requests)  # StopIteration ends the stream, as gRPC's does
        t1 = time.perf_counter()
        request.SerializeToString()
        self._answer.sequence = request.frame.sequence
        data = self._answer.SerializeToString()  # the server's side: not counted
        t2 = time.perf_counter()
        response = self._parse(data)
        t3 = time.perf_counter()
        self._timing["build"] += t1 - t0
        self._timing["serialize"] += t2 - t1 - 0.0  # includes the server's serialize; taken out below
        self._timing["parse"] += t3 - t2
        return response

    def cancel(self) -> None:
        pass


def library_cost(frames: list[bytes]) -> dict:
    """EdgeClient.stream's own per-frame work against an in-process stub that answers at once."""
    from edgeinfer.client import EdgeClient

    class Stub:
        def __init__(self) -> None:
            self.timing = {"build": 0.0, "serialize": 0.0, "parse": 0.0}

        def StreamClassify(self, requests: Iterator[Any], timeout: float | None = None) -> _InstantCall:
            return _InstantCall(requests, self.timing)

    answer = canned_response()
    t = time.perf_counter()
    for _ in range(len(frames)):
        answer.SerializeToString()
    server_serialize = time.perf_counter() - t
    stub = Stub()
    client = EdgeClient("127.0.0.1:1")  # never connects: the stub answers
    client._stub = stub  # type: ignore[assignment]
    t0 = time.perf_counter()
    n = 0
    for r in client.stream(frames, MODEL, precision="int8", drop_policy="all", resize="off"):
        assert r.prediction is not None and len(r.prediction.classes) == 5
        n += 1
    total = time.perf_counter() - t0
    client.close()
    per = {k: v / n * 1e3 for k, v in stub.timing.items()}
    per["serialize"] = max(0.0, (stub.timing["serialize"] - server_serialize) / n * 1e3)
    total_ms = (total - server_serialize) / n * 1e3
    # What is left: the library's loop around them (latency bookkeeping, FrameResult.from_proto).
    per["result"] = max(0.0, total_ms - per["build"] - per["serialize"] - per["parse"])
    return {"frames": n, "per_frame_ms": total_ms, "stages_ms": per}


def write_folder(folder: Path, n: int, size: int) -> Path:
    import cv2
    import numpy as np

    from edgeinfer.media.sample import synthetic_frame

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, i in enumerate(rng.integers(0, 999, n)):
        frame = synthetic_frame(int(i), size, size)
        (folder / f"{k:03d}.jpg").write_bytes(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    return folder


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
