"""Frame bytes held per connection and in all: a reader waits for room, and every byte taken comes back."""

from __future__ import annotations

import asyncio

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.server.byte_budget import FRAMES_PER_STREAM, ByteBudget, frame_bytes


def test_a_connection_over_its_budget_waits_until_an_answer_gives_bytes_back() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(per_stream=1000, total=10_000)
        events: list[str] = []
        held = [budget.take("a", 600), budget.take("a", 600)]  # one frame over: the one read while there was room
        assert not budget.has_room("a") and budget.has_room("b")  # another connection is not held up

        async def reader() -> None:
            await budget.room("a")
            events.append("a reads")

        waiting = asyncio.ensure_future(reader())
        await asyncio.sleep(0.01)
        events.append("answer")
        held[0].release()
        held[0].release()  # a second release gives nothing back twice
        await asyncio.wait_for(waiting, 5)
        assert budget.held == 600 and budget.holding("a") == 600 and budget.peak == 1200
        held[1].release()
        assert budget.held == 0 and budget.holding("a") == 0
        return events

    assert asyncio.run(scenario()) == ["answer", "a reads"]


def test_the_daemon_total_holds_every_connection() -> None:
    async def scenario() -> bool:
        budget = ByteBudget(per_stream=1000, total=1500)
        first = budget.take("a", 900)
        budget.take("b", 900)
        room = not budget.has_room("c")  # a third connection waits: the daemon holds its total
        first.release()
        return room and budget.has_room("c")

    assert asyncio.run(scenario())


def test_a_unary_frame_is_held_for_the_block_only() -> None:
    async def scenario() -> tuple[int, int]:
        budget = ByteBudget.for_frames(100)
        async with budget.frame("a", 80):
            inside = budget.held
        return inside, budget.held

    assert asyncio.run(scenario()) == (80, 0)
    assert ByteBudget.for_frames(100).per_stream == FRAMES_PER_STREAM * 100


def test_frame_bytes_counts_what_each_kind_of_image_brings_in() -> None:
    assert frame_bytes(pb.Image(jpeg=b"x" * 123)) == 123
    assert frame_bytes(pb.Image(raw=pb.RawImage(height=2, width=3, data=bytes(18)))) == 18
    shm = pb.Image(shared_memory=pb.SharedMemoryImage(height=4, width=5, offset=0))
    assert frame_bytes(shm) == 60  # copied out of the region when decoded
    assert frame_bytes(pb.Image()) == 0
