"""bench/frame_cost.py: its figures are computed from what it measured, and the client library's
own cost is measured through EdgeClient.stream. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import frame_client, frame_cost_report, thread_cpu
from tests.bench.test_benches import PNG, run_bench


def test_served_ratios_from_the_chunks() -> None:
    limit = [{"frames": 10, "seconds": 0.020}, {"frames": 10, "seconds": 0.030}]
    served = [{"frames": 9, "seconds": 0.027}, {"frames": 9, "seconds": 0.036}]
    r = frame_cost_report.served_ratios(limit, served)
    assert r["limit_ms_per_frame"] == pytest.approx(2.5)
    assert r["served_ms_per_frame"] == pytest.approx(3.5)
    assert r["served_over_limit"] == pytest.approx(2.5 / 3.5)
    assert r["overhead_ms_per_frame"] == pytest.approx(1.0)
    # Chunk by chunk: 2.0 vs 3.0 ms, then 3.0 vs 4.0 ms.
    assert r["overhead_ms_per_frame_chunk_median"] == pytest.approx(1.0)
    assert r["served_over_limit_chunk_median"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert r["chunks"] == 2


def test_library_cost_goes_through_edgeclient_stream() -> None:
    jpegs = [b"\xff\xd8not really a jpeg but bytes pass through" * 10] * 30
    cost = frame_client.library_cost(jpegs)
    assert cost["frames"] == 30
    assert set(cost["stages_ms"]) == {"build", "serialize", "parse", "result"}
    assert all(v >= 0 for v in cost["stages_ms"].values())
    assert sum(cost["stages_ms"].values()) <= cost["per_frame_ms"] + 1e-9


def test_thread_breakdown_of_collapsed_stacks() -> None:
    raw = "\n".join(
        [
            "process 1:python;thread (0x1);_run (edgeinfer/server/inference_thread.py:130);forward (x.py:1);at::conv 7",
            "process 1:python;thread (0x1);_run (edgeinfer/server/inference_thread.py:130);wait (threading.py:1) 3",
            "process 1:python;thread (0x2);_read_stream (edgeinfer/server/servicer.py:200);FromString (pb:1) 4",
            "process 1:python;thread (0x3);gomp_thread_start;gomp_team_barrier_wait_end 5",
            "not a stack line",
        ]
    )
    out = thread_cpu.thread_breakdown(raw)
    assert out == {
        "inference thread": {"model (torch ops)": 7, "idle/blocked": 3},
        "stream reader": {"protobuf": 4},
        "OpenMP worker": {"openmp spin/wait": 5},
    }


@pytest.mark.slow
def test_frame_cost_tiny(tmp_path: Path, squeezenet_int8: Any) -> None:
    run_bench(
        "frame_cost",
        "--tiny",
        "--b-env",
        "OMP_WAIT_POLICY=PASSIVE",
        "--repository",
        str(squeezenet_int8.folder.parents[1]),  # the session's artifact: not quantized again
        "--out",
        str(tmp_path),
    )
    r = json.loads((tmp_path / "frame_cost.json").read_text())
    # --tiny: 2 rounds; chunks of 6 frames back to back (a served chunk's first answer is left out
    # of the rate) and of 4 frames one in flight.
    assert r["limit"]["frames"] == 2 * 6 and r["limit"]["latency_frames"] == 2 * 4
    # Both bare floors (sync, as the daemon; grpc.aio, the prototype) ran every round.
    for floor in r["grpc_floor"].values():
        assert floor["frames"] == 2 * 5 and floor["latency_frames"] == 2 * 4
    assert set(r["grpc_floor"]) == {"floor sync", "floor aio"}
    assert set(r["variants"]) == {"A", "B"}
    assert r["variants"]["B"]["env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    for v in r["variants"].values():
        assert v["served_frames"] == 2 * 5 and v["latency_frames"] == 2 * 4
        assert v["limit_ms_per_frame"] == pytest.approx(r["limit"]["ms_per_frame"])
        assert v["served_over_limit"] == pytest.approx(v["limit_ms_per_frame"] / v["served_ms_per_frame"])
        assert v["overhead_ms_per_frame"] == pytest.approx(v["served_ms_per_frame"] - v["limit_ms_per_frame"])
        assert v["added_latency_p50_ms"] == pytest.approx(v["served_latency_p50_ms"] - r["limit"]["latency_p50_ms"])
        assert v["served_stages_ms"]["inference"] > 0 and v["served_stages_ms"]["decode"] > 0
        # A backlog runs as batches: each frame's share of its forward pass is at most the pass.
        assert v["served_stages_ms"]["batch"] >= 1
        assert v["served_stages_ms"]["inference_per_frame"] <= v["served_stages_ms"]["inference"]
        # CPU per frame, every thread of both processes, minus the limit's: the inference thread ran.
        assert v["cpu_ms_per_frame"]["daemon"]["inference thread"] > 0
        assert v["cpu_overhead_ms_per_frame"] == pytest.approx(
            sum(v["cpu_ms_per_frame"]["daemon"].values())
            + sum(v["cpu_ms_per_frame"]["client"].values())
            - sum(r["limit"]["cpu_ms_per_frame"].values())
        )
    a, b = r["variants"]["A"], r["variants"]["B"]
    assert r["ab"]["overhead_ms_per_frame_B_minus_A"] == pytest.approx(
        b["overhead_ms_per_frame"] - a["overhead_ms_per_frame"]
    )
    assert r["client_library"]["frames"] == 3 * 20
    assert r["client_library"]["per_frame_ms"] > 0
    assert len(r["uptime"]) == 1 + 2  # before, and after each round
    assert (tmp_path / "frame_cost.png").read_bytes()[:8] == PNG
