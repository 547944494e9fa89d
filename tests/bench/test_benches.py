"""The benchmarks run on a tiny setting and write their JSON and plot.

Timings are never asserted (the machine is shared and noisy), nor the wording of
their tables: what is checked is the JSON they write (every mode ran, counted its
frames, the ratios agree with the rows) and that the plot is a PNG.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def run_bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.MODULE ARGS`` from the repository root, as the README runs it."""
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def bench_module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


@pytest.mark.slow
def test_serve_bench_tiny(tmp_path: Path, squeezenet_int8: Any) -> None:
    out = run_bench(
        "serve_bench",
        "--tiny",
        "--models",
        "squeezenet1_0",
        "--precisions",
        "int8",
        "--repository",
        str(squeezenet_int8.folder.parents[1]),  # the session's artifact: not quantized again
        "--out",
        str(tmp_path),
    )
    assert len(out.stderr.splitlines()) >= 5  # progress is shown as it goes
    result = json.loads((tmp_path / "serve_bench.json").read_text())
    modes = {(r["precision"], r["mode"]) for r in result["rows"]}
    for precision in ("int8",):
        for mode in (
            "a model",
            "b limit",
            "c served",
            "b limit latency",
            "c served latency",
            "c floor latency",
            "c floor hot latency",
            "d 1 streams",
            "d 2 streams",
            "d 2 streams forced",
            "e tcp+jpeg latency",
            "e unix+raw latency",
            "e unix+shm latency",
            "e tcp+jpeg 640x480 latency",
            "e unix+raw 640x480 latency",
            "e unix+shm 640x480 latency",
        ):
            assert (precision, mode) in modes
    assert all(sizes[0] == 1 for sizes in result["batch_sizes"].values())
    ratios = result["summary"]["squeezenet1_0 int8"]
    assert {"unix_shm_vs_tcp_jpeg_p50", "unix_raw_vs_tcp_jpeg_640x480_overhead_saved_ms"} <= set(ratios)
    assert ratios["added_above_floor_ms"] == pytest.approx(ratios["added_latency_p50_ms"] - ratios["grpc_floor_p50_ms"])
    stages = {r["mode"]: r["stages_ms"] for r in result["rows"] if r["precision"] == "int8"}
    fps = {r["mode"]: r["fps"] for r in result["rows"] if r["precision"] == "int8"}
    # Beside the ratio, the frontend's cost per frame: served ms/frame minus the limit's.
    assert ratios["overhead_ms_per_frame"] == pytest.approx(1e3 / fps["c served"] - 1e3 / fps["b limit"])
    # Model time taken out of each frame first: the in-process limit now has an overhead stage too.
    assert ratios["added_latency_model_time_out_ms"] == pytest.approx(
        stages["c served latency"]["overhead"] - stages["b limit latency"]["overhead"]
    )
    # The floor holds each frame as long as the limit takes; the hot floor answers at once.
    assert stages["c floor hot latency"]["inference"] < stages["c floor latency"]["inference"]
    assert ratios["grpc_floor_hot_p50_ms"] == stages["c floor hot latency"]["overhead"]
    # (d) runs in every round, a share of the frames each time: 1 round of 6 frames per stream here.
    d2 = next(r for r in result["rows"] if (r["precision"], r["mode"]) == ("int8", "d 2 streams"))
    assert d2["frames"] == 2 * 6
    assert all(r["frames"] > 0 for r in result["rows"] if not r["mode"].endswith("(peer)"))
    assert result["footprint"]["client_imports_torch"] is False
    assert result["footprint"]["daemon_rss_mb"] > 0 and result["footprint"]["daemon_startup_s"] > 0
    assert set(result["summary"]) >= {"squeezenet1_0 int8"}
    assert (tmp_path / "serve_bench.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_quant_flows_bench_tiny(tmp_path: Path) -> None:
    run_bench("quant_flows", "--models", "squeezenet1_1", "--skip-pt2e", "--iterations", "3", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "quant_flows.json").read_text())
    assert [r["variant"] for r in rows] == ["fp32", "int8-fx"]
    assert rows[1]["sqnr_db"] > 20
    assert (tmp_path / "quant_flows.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_gpu_bench_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu_fp16.py runs the same code on the CPU (fp32), so a GPU lease is not spent finding its bugs."""
    out = run_bench(
        "gpu_fp16",
        "--device",
        "cpu",
        "--tiny",
        "--models",
        "squeezenet1_1",
        "--batches",
        "1",
        "2",
        "--streams",
        "2",
        "--out",
        str(tmp_path),
    )
    result = json.loads((tmp_path / "gpu_fp16.json").read_text())
    assert [(r["precision"], r["batch"]) for r in result["model_only"]] == [("fp32", 1), ("fp32", 2)]
    assert [r["where"] for r in result["preprocessing"]] == ["cpu"]
    served = {(r["streams"], r["batching"]): r for r in result["served"]}
    assert set(served) == {(2, b) for b in ("off", "on", "on x2")}  # x2: edgeserver --workers 2
    assert all(r["answered"] == r["sent"] == r["streams"] * 3 for r in served.values())
    for (n, batching), r in served.items():  # each run's streams, as the kernel spread them over the workers
        workers = 2 if "x2" in batching else 1
        assert all(sum(split) == n and len(split) == workers for split in r["streams_per_worker"])
    # The plot's third panel: each x2 run's busiest worker's share and its frames/s over one daemon's median.
    spread = bench_module("gpu_report").worker_runs(result["served"])
    assert sorted((n, share) for _, n, share, _ in spread) == sorted(
        (n, max(split) / n) for (n, b), r in served.items() if "x2" in b for split in r["streams_per_worker"]
    )
    one = {n: served[(n, "on")]["frames_per_s"] for n in (2,)}
    assert sorted(gain * one[n] for _, n, _, gain in spread) == pytest.approx(
        sorted(fps for (n, b), r in served.items() if "x2" in b for fps in r["runs_fps"])
    )
    assert served[(2, "off")]["mean_batch"] == 1.0  # --max-batch 1: never more than one frame a pass
    assert all(r["daemon_cores"] > 0 and r["client_cores"] > 0 for r in served.values())
    assert (tmp_path / "gpu_fp16.png").read_bytes()[:8] == PNG
    # A run cut short keeps its progress lines: the table and plot can be rebuilt from them.
    (tmp_path / "gpu_fp16.log").write_text(out.stderr)
    gpu_fp16 = bench_module("gpu_fp16")  # in process from here: torch is loaded already
    assert gpu_fp16.main(["--from-log", str(tmp_path / "gpu_fp16.log"), "--out", str(tmp_path / "rebuilt")]) == 0
    rebuilt = json.loads((tmp_path / "rebuilt" / "gpu_fp16.json").read_text())
    assert [r["median_ms"] for r in rebuilt["model_only"]] == pytest.approx(
        [r["median_ms"] for r in result["model_only"]], abs=0.01
    )
    fps = {(r["streams"], r["batching"]): r["frames_per_s"] for r in rebuilt["served"]}
    assert fps == pytest.approx({k: r["frames_per_s"] for k, r in served.items()}, abs=0.5)
    splits = {(r["streams"], r["batching"]): r.get("streams_per_worker") for r in rebuilt["served"]}
    assert splits == {k: r["streams_per_worker"] if "x2" in k[1] else None for k, r in served.items()}
    assert (tmp_path / "rebuilt" / "gpu_fp16.png").read_bytes()[:8] == PNG
    # --parts: one part alone (a second GPU call spends its lease on what it reruns).
    assert gpu_fp16.main(["--device", "cpu", "--tiny", "--parts", "preprocessing", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "gpu_fp16.json").read_text())
    assert (one["model_only"], one["served"]) == ([], []) and [r["where"] for r in one["preprocessing"]] == ["cpu"]


@pytest.mark.slow  # a client process per stream
def test_stream_clients_answer_every_frame_and_spread_streams_over_the_targets(target: str, tmp_path: Path) -> None:
    """bench/stream_clients.py: one client process per stream, stream i to target i % len(targets)."""
    from edgeinfer.client.frames import Encoder, Frame
    from edgeinfer.media.sample import synthetic_frame

    clients = bench_module("stream_clients")
    run_streams = clients.run_streams
    jpeg = Encoder("jpeg", 90).to_proto(Frame(synthetic_frame(0, 224, 224))).jpeg
    got = run_streams([target], "squeezenet", jpeg, n=3, frames=4)
    assert got["answered"] == got["sent"] == 12
    assert got["mean_batch"] >= 1.0 and got["inference_ms_p50"] > 0 and got["fps"] > 0
    assert got["daemon_cores"] is None and got["client_cores"] > 0 and got["streams_per_worker"] is None
    # The session's daemon serves in this process: its connections are counted, the clients' own are not.
    port = int(target.rsplit(":", 1)[1])
    before = clients.streams_per_worker(os.getpid(), [port])  # other tests' channels may still be open
    assert len(before) == 1
    got = run_streams([target], "squeezenet", jpeg, n=3, frames=2, daemon_pids=[os.getpid()])
    assert got["answered"] == 6 and got["streams_per_worker"] == [before[0] + 3]
    assert clients.streams_per_worker(os.getpid(), [port + 1]) == []  # a port it does not listen on
    nobody = f"unix:{tmp_path / 'nobody.sock'}"
    assert run_streams([target, nobody], "squeezenet", jpeg, n=1, frames=2)["answered"] == 2  # stream 0: target
    with pytest.raises(RuntimeError, match="a stream client did not start"):  # stream 1 goes to nobody
        run_streams([target, nobody], "squeezenet", jpeg, n=2, frames=2, ready_timeout=2)


def test_cpu_seconds_counts_a_daemons_worker_processes() -> None:
    """stream_clients.cpu_seconds(pid): the process and its children, as edgeserver --workers runs."""
    cpu_seconds = bench_module("stream_clients").cpu_seconds
    # A parent that sleeps, and its child that burns 0.4 s of CPU and then waits to be stopped.
    child = "import sys, time\nwhile time.process_time() < 0.4: pass\nprint('done', flush=True)\nsys.stdin.read()"
    parent = (
        "import subprocess, sys\n"
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdin=subprocess.PIPE)\n"
        "sys.stdin.read(); c.stdin.close(); c.wait()"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"  # the child's line
        assert cpu_seconds(proc.pid) >= 0.4
    finally:
        proc.communicate("", timeout=30)


def test_grpc_floor_holds_each_frame_and_answers_in_order() -> None:
    """The floor server answers every frame, in order, after holding it as long as the model name says."""
    import grpc

    from edgeinfer.client import EdgeClient, EdgeInferError

    grpc_floor = bench_module("grpc_floor")
    from concurrent import futures

    from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    thread = grpc_floor.InferenceThread(threads=1)
    pb_grpc.add_EdgeInferenceServicer_to_server(grpc_floor.FloorServicer(thread), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with EdgeClient(f"127.0.0.1:{port}", timeout=30) as client:
            frames = [b"\xff\xd8 not decoded" for _ in range(5)]
            results = list(client.stream(frames, grpc_floor.busy_model(3.0), drop_policy="all", timeout=30))
            assert [r.sequence for r in results] == list(range(5))
            assert all(r.prediction is not None and r.prediction.timings.inference_ms >= 3.0 for r in results)
            assert all(r.latency_ms is not None and r.latency_ms >= r.prediction.timings.inference_ms for r in results)
            with pytest.raises(EdgeInferError) as err:
                list(client.stream(frames, "squeezenet", timeout=30))
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)
        thread.stop()
    assert not any(t.name == "floor-infer" for t in threading.enumerate())


@pytest.mark.slow
def test_v2_vs_v1_tiny_measures_every_mode_on_the_same_daemon(target: str, tmp_path: Path) -> None:
    """bench/v2_vs_v1.py --tiny against the session's daemon: every mode answered its frames, ratios are computed."""
    bench = bench_module("v2_vs_v1")
    # A time budget no loaded machine reaches: the frame counts below are then exact.
    args = ["--tiny", "--max-seconds", "3000", "--target", target, "--model", "squeezenet", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    result = json.loads((tmp_path / "v2_vs_v1.json").read_text())
    config = result["config"]
    assert (config["rounds"], config["unary_frames"], config["stream_frames"], config["streams"]) == (1, 2, 3, 2)
    frames = {name: row["frames"] for name, row in result["modes"].items()}
    assert frames == {
        "v1 classify": 2,
        "v2 infer": 2,
        "v2 infer probs": 2,
        "v1 stream": 3,
        "v2 stream": 3,
        "v1 2 streams": 6,
        "v2 2 streams": 6,
    }
    for name, row in result["modes"].items():
        assert row["fps"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0, name
        assert 0 < row["server_p50_ms"] <= row["p95_ms"], name  # the daemon's share is inside the client's time
        assert 0 < row["overhead_p50_ms"] <= row["p50_ms"], name  # each latency minus its forward pass
        assert len(row["fps_rounds"]) == 1
    modes = result["modes"]
    ratios = result["ratios"]
    assert ratios["unary_p50_v2_over_v1"] == pytest.approx(modes["v2 infer"]["p50_ms"] / modes["v1 classify"]["p50_ms"])
    assert ratios["streams_fps_v2_over_v1"] == pytest.approx(
        modes["v2 2 streams"]["fps"] / modes["v1 2 streams"]["fps"]
    )
    assert ratios["unary_added_ms_v2_minus_v1"] == pytest.approx(
        modes["v2 infer"]["p50_ms"] - modes["v1 classify"]["p50_ms"]
    )
    assert ratios["unary_overhead_p50_ms_v2"] == modes["v2 infer"]["overhead_p50_ms"]
    assert (tmp_path / "v2_vs_v1.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_memory_rounds_tiny(tmp_path: Path) -> None:
    run_bench("memory_rounds", "--rounds", "1", "--streams", "4", "--settle-s", "0.5", "--out", str(tmp_path))
    result = json.loads((tmp_path / "memory_rounds.json").read_text())
    assert set(result["variants"]) == {"shipped", "uncapped"}
    assert result["variants"]["uncapped"]["env"] == {"MALLOC_ARENA_MAX": "16"}
    for v in result["variants"].values():
        assert v["baseline_mb"] > 0 and len(v["after_round_mb"]) == 1
        # streams 0 and 3 walk away after their first answer; 1 and 2 get all four
        assert v["streams"]["CANCELLED"] == 2 and v["streams"]["OK"] == 2
        assert v["streams"]["answers"] == 2 * 1 + 2 * 4
        assert v["end_over_baseline_pct"] == pytest.approx((v["after_round_mb"][0] / v["baseline_mb"] - 1) * 100)
    assert (tmp_path / "memory_rounds.png").read_bytes()[:8] == PNG
