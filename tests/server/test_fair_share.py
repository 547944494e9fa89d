"""Decoding round-robin between connections: one client's many jobs do not go before another's one."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgeinfer.server.fair_share import FairShare


def test_a_connection_with_one_job_waits_behind_at_most_one_job_of_a_busy_connection() -> None:
    share = FairShare(threads=1)
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocker() -> str:
        started.set()
        release.wait(10)
        return "blocker"

    def job(name: str) -> str:
        ran.append(name)
        return name

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(share.run("busy", blocker))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        # While the only thread is busy: ten more from the busy connection, then one from a quiet one.
        busy = [asyncio.ensure_future(share.run("busy", lambda i=i: job(f"busy-{i}"))) for i in range(10)]
        await asyncio.sleep(0)
        quiet = asyncio.ensure_future(share.run("quiet", lambda: job("quiet")))
        await asyncio.sleep(0.05)
        assert share.waiting("busy") == 10 and share.waiting("quiet") == 1
        release.set()
        return await asyncio.gather(first, *busy, quiet)

    try:
        results = asyncio.run(scenario())
    finally:
        share.stop()
    assert results == ["blocker", *(f"busy-{i}" for i in range(10)), "quiet"]  # every caller got its own answer
    assert ran.index("quiet") == 1  # after one job of the busy connection, not after all ten
    assert share.done == 12


def test_an_exception_goes_back_to_its_caller_and_the_thread_goes_on() -> None:
    share = FairShare(threads=1)

    def fails() -> None:
        raise ValueError("bad frame")

    async def scenario() -> str:
        with pytest.raises(ValueError, match="bad frame"):
            await share.run("a", fails)
        return await share.run("a", lambda: "next")

    try:
        assert asyncio.run(scenario()) == "next"
    finally:
        share.stop()


def test_a_lone_connection_keeps_its_whole_share_and_a_second_one_goes_next() -> None:
    from edgeinfer.server.fair_share import Turns

    async def scenario() -> tuple[list[str], int]:
        turns = Turns(share=8)
        for _ in range(8):  # alone, a stream keeps the batcher's worth of frames at the model
            await turns.enter("busy")
        order: list[str] = []

        async def one(key: str) -> None:
            await turns.enter(key)
            order.append(key)

        waiting = [asyncio.ensure_future(one("busy")) for _ in range(3)]
        await asyncio.sleep(0)
        quiet = asyncio.ensure_future(one("quiet"))  # under the share of two connections: at once
        await asyncio.sleep(0)
        assert order == ["quiet"] and turns.waiting("busy") == 3
        for _ in range(4):  # busy's answers come back: with two connections its share is 4, and it has 4
            turns.leave("busy")
        await asyncio.sleep(0)
        assert order == ["quiet"]
        for _ in range(3):  # each answer now lets one more of its frames go
            turns.leave("busy")
        await asyncio.gather(*waiting)
        await quiet
        return order, turns.at_models("busy")

    order, busy = asyncio.run(scenario())
    assert order == ["quiet", "busy", "busy", "busy"] and busy == 4
