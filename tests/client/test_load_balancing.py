"""One client, three daemons: a target with many addresses spreads streams round-robin."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from edgeinfer.client import EdgeClient
from edgeinfer.client.cli import build_parser, run
from helpers import synthetic_frame

DAEMONS = 3


@pytest.fixture(scope="module")
def fleet() -> Iterator[list[object]]:
    """Three daemons on loopback, each with its own seeded random SqueezeNet.

    One model per daemon: Daemon.stop() stops the models of its table, so a shared
    one would die with the first daemon stopped. No warm-up or batch profiling:
    these tests count calls, not speed.
    """
    import torch

    from edgeinfer.server import Daemon, WeightsSource, load_model

    torch.set_num_threads(1)
    daemons = []
    try:
        for _ in range(DAEMONS):
            d = Daemon(["127.0.0.1:0"], max_streams=8).start()
            daemons.append(d)
            d.add_model(
                load_model("squeezenet", weights=WeightsSource("random", seed=0), warmup=False, batch_sizes=[1])
            )
            d.mark_ready()
        yield daemons
    finally:
        for d in daemons:
            d.stop(grace=1)


def _ipv4_target(daemons: list[object]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{d.port}" for d in daemons)  # type: ignore[attr-defined]


def _opened(daemons: list[object]) -> list[int]:
    return [d.servicer.streams_opened for d in daemons]  # type: ignore[attr-defined]


def test_streams_spread_over_every_daemon(fleet: list[object]) -> None:
    """Six streams held open together: each daemon serves some of them at the same time."""
    before = _opened(fleet)
    release = threading.Event()
    frame = synthetic_frame(0)

    def frames() -> Iterator[object]:
        yield frame
        release.wait(30)  # keeps the stream open (in gRPC's sender thread) until every stream has started

    with EdgeClient(_ipv4_target(fleet), timeout=30) as client:
        client.wait_ready("squeezenet")
        streams = [client.stream(frames(), "squeezenet", top_k=3, drop_policy="all", timeout=60) for _ in range(6)]
        try:
            # Each stream's first answer comes back before the next stream opens: by then every
            # connection is ready, so round_robin has all three daemons to choose from.
            firsts = [next(s) for s in streams]
            open_now = [d.servicer.open_streams for d in fleet]  # type: ignore[attr-defined]
        finally:
            release.set()
        rests = [list(s) for s in streams]

    assert [r.sequence for r in firsts] == [0] * 6
    assert all(r.prediction is not None and len(r.prediction.classes) == 3 for r in firsts)
    assert rests == [[]] * 6  # one frame sent, one answer each
    served = [after - b for after, b in zip(_opened(fleet), before, strict=True)]
    assert sum(served) == 6
    assert all(n >= 1 for n in served), f"streams per daemon: {served}"
    assert sum(open_now) == 6 and all(n >= 1 for n in open_now), f"open streams per daemon: {open_now}"


def test_same_answer_from_every_daemon(fleet: list[object]) -> None:
    """The daemons load the same seeded weights: wherever a call lands, the answer is the same."""
    with EdgeClient(_ipv4_target(fleet), timeout=30) as client:
        client.wait_ready("squeezenet")
        answers = [client.classify(synthetic_frame(1), "squeezenet", top_k=5) for _ in range(2 * DAEMONS)]
    assert len({tuple(c.index for c in a.classes) for a in answers}) == 1


def test_edgeclient_cli_takes_a_list_of_daemons(fleet: list[object], tmp_path: Path) -> None:
    for i in range(3):
        assert cv2.imwrite(str(tmp_path / f"{i}.jpg"), synthetic_frame(i))
    before = _opened(fleet)
    args = build_parser().parse_args(
        ["--server", _ipv4_target(fleet), "--images", str(tmp_path), "--top-k", "2", "--drop-policy", "all"]
    )
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run(args, stdout, stderr) == 0, stderr.getvalue()
    out = stdout.getvalue()
    assert "answered 3 (predicted 3, dropped 0, errors 0)" in out
    assert sum(_opened(fleet)) - sum(before) == 1  # the command line runs one stream
