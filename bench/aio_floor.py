"""A prototype: bench/grpc_floor.py's bare stream on ``grpc.aio``, to measure what an asyncio frontend would save.

    python -m bench.aio_floor --port 0 --threads 2      # prints "ready <port>" once it listens

The same contract as the sync floor (``busy-<ms>`` models; each frame held on one
torch thread for that long, then answered), but the stream is read and answered on
one asyncio event loop: no reader thread, no handler thread, no hand-off through
gRPC's sync poller per message. The frame still goes to an inference thread and
comes back with one ``call_soon_threadsafe``. ``bench/frame_cost.py`` runs both
floors next to each other, interleaved; the daemon's servicer stays sync.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from bench.grpc_floor import PREFIX, InferenceThread
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

__all__ = ["AioFloorServicer", "main"]


class _ToLoop:
    """What the floor's inference thread ``put``s an answer into: a future of the event loop."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[float] = loop.create_future()

    def put(self, ms: float) -> None:
        self.loop.call_soon_threadsafe(self.fut.set_result, ms)


class AioFloorServicer(pb_grpc.EdgeInferenceServicer):
    def __init__(self, thread: InferenceThread) -> None:
        self.thread = thread

    async def StreamClassify(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        config = (await anext(request_iterator)).config
        if not config.model.name.startswith(PREFIX):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"the floor server only serves {PREFIX}<ms>")
        hold_ms = float(config.model.name.removeprefix(PREFIX))
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[tuple[pb.Frame, _ToLoop] | None] = asyncio.Queue()

        async def pump() -> None:  # the reader, as a task on the same loop
            async for request in request_iterator:
                done = _ToLoop(loop)
                self.thread.jobs.put((hold_ms, done))  # type: ignore[arg-type]
                answers.put_nowait((request.frame, done))
            answers.put_nowait(None)

        reader = asyncio.create_task(pump())
        try:
            while (item := await answers.get()) is not None:
                frame, done = item
                response = pb.StreamResponse(sequence=frame.sequence, capture_time_ns=frame.capture_time_ns)
                response.prediction.timings.inference_ms = await done.fut
                response.prediction.classes.add(index=0, label="floor", probability=1.0)
                yield response
        finally:
            reader.cancel()


async def serve(port: int, threads: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_EdgeInferenceServicer_to_server(AioFloorServicer(InferenceThread(threads)), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"ready {bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (the daemon's --threads)")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.threads))


if __name__ == "__main__":
    main()
