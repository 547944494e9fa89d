"""The transport floor under the daemon's added latency: a bare gRPC stream, no model.

    python -m bench.grpc_floor --port 50600            # prints "ready <port>" once it listens

A sync gRPC Python server that speaks ``EdgeInference.StreamClassify`` with the
daemon's thread layout (a reader thread per stream, one inference thread with one
OpenMP team, the handler thread answering) and none of its work: each frame is
held on the inference thread, busy with torch ops, for as long as the stream's model name
says ("busy-7.5" holds 7.5 ms), and answered with ``inference_ms`` = the time
it was held. Latency minus that time is what gRPC Python, two processes and the
thread hand-offs cost on this machine after the same busy-then-idle gap as a
real model: the floor that no code inside the daemon can go below.
``bench/serve_bench.py`` runs it next to the daemon, interleaved.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import torch

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

PREFIX = "busy-"


def busy_model(hold_ms: float) -> str:
    """The model name that asks the floor server to hold each frame ``hold_ms``."""
    return f"{PREFIX}{hold_ms:.3f}"


class InferenceThread:
    """One thread for all torch work, as the daemon's ``cpu_thread()``."""

    def __init__(self, threads: int) -> None:
        self.jobs: queue.SimpleQueue[tuple[float, queue.SimpleQueue[float]] | None] = queue.SimpleQueue()
        self._a = torch.randn(192, 192)
        self._thread = threading.Thread(target=self._run, args=(threads,), name="floor-infer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join(5)

    def _run(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while (job := self.jobs.get()) is not None:
            hold_ms, answer = job
            t0 = time.perf_counter()
            while (time.perf_counter() - t0) * 1e3 < hold_ms:
                torch.mm(self._a, self._a)  # releases the GIL, keeps the OpenMP team busy like a model
            answer.put((time.perf_counter() - t0) * 1e3)


class FloorServicer(pb_grpc.EdgeInferenceServicer):
    def __init__(self, thread: InferenceThread) -> None:
        self.thread = thread

    def StreamClassify(
        self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        config = next(request_iterator).config
        if not config.model.name.startswith(PREFIX):
            context.abort(grpc.StatusCode.NOT_FOUND, f"the floor server only serves {PREFIX}<ms>")
        hold_ms = float(config.model.name.removeprefix(PREFIX))
        answers: queue.SimpleQueue[tuple[pb.Frame, queue.SimpleQueue[float]] | None] = queue.SimpleQueue()

        def pump() -> None:  # the daemon's reader thread
            for request in request_iterator:
                done: queue.SimpleQueue[float] = queue.SimpleQueue()
                self.thread.jobs.put((hold_ms, done))
                answers.put((request.frame, done))
            answers.put(None)

        threading.Thread(target=pump, name="floor-reader", daemon=True).start()
        while (item := answers.get()) is not None:
            frame, done = item
            response = pb.StreamResponse(sequence=frame.sequence, capture_time_ns=frame.capture_time_ns)
            response.prediction.timings.inference_ms = done.get()
            response.prediction.classes.add(index=0, label="floor", probability=1.0)
            yield response


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (the daemon's --threads)")
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_EdgeInferenceServicer_to_server(FloorServicer(InferenceThread(args.threads)), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"ready {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
