"""The frontend's per-frame cost: served over one stream against the in-process limit, interleaved.

    python -m bench.frame_cost                                  # ~1-2 min: int8 SqueezeNet 1.0, 224x224 JPEGs
    python -m bench.frame_cost --b-env OMP_WAIT_POLICY=PASSIVE  # A/B: a second daemon with this environment
    python -m bench.frame_cost --a-ref HEAD~1                   # A/B: daemon + client of a git ref vs the tree
    python -m bench.frame_cost --profile 8                      # and py-spy both processes for 8 s of served frames
    python -m bench.frame_cost --tiny --out /tmp/f              # what the test suite runs

A client *process* (this file's ``client`` command: no torch in it) streams a
folder of pre-read JPEG bytes back to back (policy all, one stream) to an
``edgeserver`` serving int8 SqueezeNet 1.0 on the same cores; in chunks that
alternate with those chunks, this process runs the in-process limit on the same
files (decode + preprocess + int8 model + top-k, on one inference thread, as the
daemon does). Then one frame in flight at a time, the same way. Reported:

  served/limit          frames/s served over frames/s in process (the issue's target: >= 0.85)
  overhead ms/frame     served ms per frame minus the limit's: what the frontend costs, whatever the model takes
  added latency p50     one frame in flight, served p50 minus the limit's p50 (target: <= 1.0 ms)
  client library        EdgeClient.stream's own work per frame (request building, protobuf serialize and
                        parse, FrameResult) against a stub that answers at once in process: no gRPC, no
                        threads; and the same client over real gRPC to a bare server that answers at once
                        (bench/grpc_floor.py holding 0 ms): the client library + gRPC's floor, per frame

With a B variant (``--b-env``, ``--b-ref``, or ``--a-ref``/``--a-env`` against the tree), two daemons
and two client processes run; every chunk of the limit is followed by one chunk of each variant, rotating
the order, so both variants see the same noise. ``--profile S`` records py-spy (native frames, idle
samples, per thread) on the daemon and the client process for S seconds of served frames, and on the
client once more with ``--gil``; the per-thread breakdown goes into the JSON and the plot.
Writes frame_cost.json and frame_cost.png into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL, PRECISION = "squeezenet1_0", "int8"
# The bare floors, answering each frame at once: the daemon's sync layout, and the grpc.aio prototype.
FLOORS = {"floor sync": "bench.grpc_floor", "floor aio": "bench.aio_floor"}
PACKAGES = ("proto", "media", "server", "client", "quant")  # pyproject's package-dir: edgeinfer.<name> = <name>/

__all__ = ["main", "served_ratios", "thread_breakdown"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


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


# --- the driver (torch: the in-process limit) -----------------------------------------------


class ClientProcess:
    def __init__(self, target: str, folder: Path, env: dict[str, str], model: str = MODEL) -> None:
        cmd = [sys.executable, "-m", "bench.frame_cost", "client", "--target", target, "--folder", str(folder)]
        cmd += ["--model", model]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ | env
        )
        hello = self._read()
        self.pid = int(hello["pid"])

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"frame_cost client exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, cmd: str, n: int) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def export_ref(ref: str, into: Path) -> Path:
    """The packages of git ``ref`` laid out as ``edgeinfer.*`` under ``into``: PYTHONPATH=into runs them."""
    for name in PACKAGES:
        dest = into / "edgeinfer" / name
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref, name], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest), "--strip-components=1"], input=archive, check=True)
    return into


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


class Limit:
    """decode + preprocess + int8 model + top-k on the daemon's inference thread, in this process."""

    def __init__(self, repository: Path) -> None:
        from edgeinfer.server import WeightsSource, load_model
        from edgeinfer.server.inference_thread import cpu_thread

        self.thread = cpu_thread()
        self.model = load_model(
            MODEL, precision=PRECISION, repository=repository, weights=WeightsSource("random", seed=0)
        )

    def run(self, jpegs: list[bytes]) -> dict:
        return self.thread.call(lambda: self._run(jpegs))

    def _run(self, jpegs: list[bytes]) -> dict:
        from edgeinfer.server.preprocess import JpegImage

        runner = self.model.scheduler.runner
        lat, stages = [], {"decode": [], "preprocess": [], "inference": []}
        t_all = time.perf_counter()
        for data in jpegs:
            t = time.perf_counter()
            pre = self.model.preprocessor(JpegImage(data))
            out = runner.infer(pre.tensor[None], 5)
            lat.append((time.perf_counter() - t) * 1e3)
            stages["decode"].append(pre.decode_ms)
            stages["preprocess"].append(pre.preprocess_ms)
            stages["inference"].append(out.inference_ms)
        return {"frames": len(jpegs), "seconds": time.perf_counter() - t_all, "latencies_ms": lat, "stages": stages}

    def stop(self) -> None:
        self.model.stop()


def served_ratios(limit: list[dict], served: list[dict]) -> dict:
    """Ratios of one variant's served chunks against the limit's chunks they alternated with.

    Both the pooled figure (all frames over all seconds, each side) and the median of the
    per-chunk ratios (each served chunk against the limit chunk next to it) are kept: the
    second is what a burst of load on the shared machine moves least.
    """
    lim_ms = sum(c["seconds"] for c in limit) * 1e3 / sum(c["frames"] for c in limit)
    srv_ms = sum(c["seconds"] for c in served) * 1e3 / sum(c["frames"] for c in served)
    pairs = [(lc["seconds"] / lc["frames"], sc["seconds"] / sc["frames"]) for lc, sc in zip(limit, served, strict=True)]
    return {
        "limit_ms_per_frame": lim_ms,
        "served_ms_per_frame": srv_ms,
        "served_over_limit": lim_ms / srv_ms,
        "overhead_ms_per_frame": srv_ms - lim_ms,
        "served_over_limit_chunk_median": statistics.median(lm / sm for lm, sm in pairs),
        "overhead_ms_per_frame_chunk_median": statistics.median((sm - lm) * 1e3 for lm, sm in pairs),
        "chunks": len(pairs),
    }


def _median_stages(chunks: list[dict]) -> dict[str, float]:
    keys = chunks[0]["stages"].keys()
    return {k: statistics.median(v for c in chunks for v in c["stages"][k]) for k in keys}


# --- every thread's CPU time, native threads included ------------------------------------------


def thread_cpu(pid: int, names: dict[int, str]) -> dict[str, float]:
    """Seconds on a CPU of each thread of ``pid``, summed by ``thread_label``.

    From /proc/PID/task/TID/schedstat (nanoseconds): it counts the threads py-spy does not
    see (OpenMP's team, gRPC's C-core threads) as well as the Python ones.
    """
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        name = thread_label(int(task.name), comm, names)
        out[name] = out.get(name, 0.0) + on_cpu_ns / 1e9
    # A thread that ended is gone from /proc/PID/task, but the process's utime + stime (in clock
    # ticks) keep its time: the stream's own threads (reader, sender) live one chunk.
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    out[PROCESS_TOTAL] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


PROCESS_TOTAL = "process total (ticks)"
ENDED = "threads that ended (per-stream: reader / sender), by difference"


def per_frame_cpu(threads: dict[str, float], frames: int) -> dict[str, float]:
    """CPU ms per frame by thread; what the live threads do not account for goes to ``ENDED``."""
    total = threads.get(PROCESS_TOTAL, 0.0)
    live = {k: v for k, v in threads.items() if k != PROCESS_TOTAL}
    live[ENDED] = max(0.0, total - sum(live.values()))  # coarse: ticks are 10 ms, summed over every chunk
    return {k: v * 1e3 / frames for k, v in sorted(live.items(), key=lambda kv: -kv[1])}


def thread_names(pid: int) -> dict[int, str]:
    """{tid: name} of the process's threads now: Python's names (py-spy dump), "?" for the others.

    Python does not give its threads' names to the OS, so /proc alone cannot tell the
    inference thread from an OpenMP worker; a thread started later is a stream's own.
    """
    names = {int(t.name): "?" for t in Path(f"/proc/{pid}/task").iterdir()}
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        dump = subprocess.run([exe, "dump", "--pid", str(pid), "--json"], capture_output=True, text=True, timeout=60)
        names |= {int(t["os_thread_id"]): t["thread_name"] for t in json.loads(dump.stdout)}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        log("py-spy dump failed: threads are named by /proc only")
    return names


def thread_label(tid: int, comm: str, names: dict[int, str]) -> str:
    name = names.get(tid)
    if name is None:  # born after the snapshot: a stream's own thread
        return "per-stream thread (stream-reader / request sender)"
    if name != "?":
        return {"infer-cpu": "inference thread", "MainThread": "main"}.get(name, name.split("_")[0])
    if comm in ("python", "python3", "edgeserver") or comm.startswith("python"):
        return "OpenMP worker"  # a thread of the process's own name that Python does not know
    return f"gRPC core ({comm})" if comm in ("event_engine", "grpc_global_tim", "lifeguard") else comm


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def add_into(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


# --- py-spy -------------------------------------------------------------------------------------------

# Where a sample is, by the frames of its stack (first match, innermost frame first).
CATEGORIES = (
    ("openmp spin/wait", ("gomp_", "do_spin", "do_wait", "gomp_team_barrier", "gomp_barrier")),
    (
        "idle/blocked",
        (
            "epoll_wait",
            "poll (",
            "futex",
            "pthread_cond",
            "sem_wait",
            "sem_clockwait",
            "nanosleep",
            "select (",
            "clock_nanosleep",
            "take_gil",
            "__lll_lock_wait",
            "acquire (threading",
            "wait (threading",
            "get (queue",
        ),
    ),
    ("model (torch ops)", ("at::", "torch::", "fbgemm", "c10::", "mkldnn", "dnnl", "forward (", "infer (")),
    ("decode/preprocess", ("cv2", "imdecode", "jpeg", "preprocess", "resize", "decode_ms")),
    ("protobuf", ("upb_", "_upb", "SerializeToString", "FromString", "google::protobuf", "Message_")),
    ("gRPC core", ("grpc_", "grpc::", "grpc_core", "cygrpc", "tcp_", "chttp2", "epoll")),
)


def _category(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "python (other)"


def thread_breakdown(raw: str) -> dict[str, dict[str, int]]:
    """py-spy ``--threads -f raw`` output (collapsed stacks) -> {thread: {category: samples}}."""
    out: dict[str, dict[str, int]] = {}
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        frames = stack_text.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), frames[0])
        thread = _thread_label(thread, frames)
        cat = _category(frames)
        out.setdefault(thread, {}).setdefault(cat, 0)
        out[thread][cat] += int(count)
    return out


def _thread_label(thread: str, frames: list[str]) -> str:
    """A readable name for a thread: py-spy gives its id; the entry function says which it is."""
    text = ";".join(frames)
    for needle, name in (
        ("_pump", "stream reader"),
        ("InferenceThread._run", "inference thread"),
        ("_run (edgeinfer", "inference thread"),
        ("gomp_thread_start", "OpenMP worker"),
        ("_serve (grpc", "gRPC server poll"),
        ("_process_request", "gRPC handler"),
        ("_unary_response_in_pool", "gRPC handler"),
        ("_stream_response_in_pool", "gRPC handler"),
        ("consume_request_iterator", "client send (request iterator)"),
        ("channel_spin", "gRPC channel poll"),
        ("client_main", "client main (receive)"),
        ("timer_thread", "gRPC timer"),
        ("executor", "gRPC executor"),
    ):
        if needle in text:
            return name
    # py-spy writes "thread (TID): NAME" for Python threads
    return thread.partition(": ")[2] or "other"


class Profiler:
    def __init__(self, pid: int, out: Path, seconds: float, rate: int, gil: bool = False) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.cmd = [exe, "record", "--pid", str(pid), "--native", "--idle", "--threads", "-r", str(rate), "-f", "raw"]
        self.cmd += [*(["--gil"] if gil else []), "-d", str(int(seconds)), "-o", str(out)]
        self.out = out
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict[str, dict[str, int]]:
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 or not self.out.exists():
            log(f"py-spy failed ({self.proc.returncode}): {err.strip()[-500:]}")
            return {}
        return thread_breakdown(self.out.read_text())


# --- main ------------------------------------------------------------------------------------------------


def _variant(ref: str | None, env: list[str], tmp: Path, label: str, threads: int) -> dict:
    extra = dict(kv.split("=", 1) for kv in env)
    if ref:
        extra["PYTHONPATH"] = str(export_ref(ref, tmp / f"src-{label}"))
    return {"label": label, "ref": ref or "working tree", "env": extra, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="JPEGs to stream (default: 16 synthetic 224x224 frames)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    p.add_argument("--chunk", type=int, default=40, help="frames per chunk, back to back")
    p.add_argument("--latency-chunk", type=int, default=15, help="frames per chunk, one in flight")
    p.add_argument("--cost-frames", type=int, default=400, help="frames through the in-process stub")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, daemon and in-process alike")
    p.add_argument("--a-ref", help="git ref the A daemon and client run (default: the working tree)")
    p.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="A daemon's environment")
    p.add_argument("--b-ref", help="git ref for B (default: the working tree)")
    p.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="B daemon's environment")
    p.add_argument("--b-threads", type=int, help="B daemon's --threads (default: --threads)")
    p.add_argument("--b-arg", action="append", default=[], help="an edgeserver argument for B only (--b-arg=--x=y)")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy A's served frames this long")
    p.add_argument("--profile-rate", type=int, default=500)
    p.add_argument("--repository", type=Path, default=ROOT / "bench" / "results" / "model-repo")
    p.add_argument("--tiny", action="store_true", help="a few frames of everything (the test suite)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.tiny:
        args.rounds, args.chunk, args.latency_chunk, args.cost_frames = 2, 6, 4, 20
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from bench.daemon import DaemonProcess, FloorProcess
    from bench.grpc_floor import busy_model
    from bench.serve_bench import ensure_int8

    torch.set_num_threads(args.threads)
    ensure_int8([MODEL], args.repository, args.tiny)
    tmp = Path(tempfile.mkdtemp(prefix="frame-cost-"))
    folder = args.folder or write_folder(tmp / "frames", 16, 224)
    jpegs = read_folder(folder)
    if not jpegs:
        raise SystemExit(f"no .jpg files in {folder}")
    variants = [_variant(args.a_ref, args.a_env, tmp, "A", args.threads)]
    if args.b_ref or args.b_env or args.a_ref or args.a_env or args.b_threads or args.b_arg:
        variants.append(_variant(args.b_ref, args.b_env, tmp, "B", args.b_threads or args.threads))
        variants[-1]["args"] = tuple(args.b_arg)
    uptime = [_uptime()]
    daemons, clients, floors, floor_clients = [], [], {}, {}
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "frames_in_folder": len(jpegs),
        # Where the limit runs (this process) and what every daemon inherits unless a variant sets it.
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
    }
    try:
        limit = Limit(args.repository)
        for v in variants:
            log(f"starting edgeserver {v['label']} ({v['ref']}, env {v['env']})")
            d = DaemonProcess(
                [f"{MODEL}:{PRECISION}"], args.repository, v["threads"], None, 8, v.get("args", ()), env=v["env"]
            )
            daemons.append(d)
            clients.append(ClientProcess(f"127.0.0.1:{d.port}", folder, v["env"]))
        for kind in FLOORS:
            floors[kind] = FloorProcess(args.threads, FLOORS[kind])
            floor_clients[kind] = ClientProcess(floors[kind].target, folder, {}, model=busy_model(0.0))
        frames = [jpegs[i % len(jpegs)] for i in range(args.chunk)]
        lat_frames = [jpegs[i % len(jpegs)] for i in range(args.latency_chunk)]
        limit.run(frames[:4])  # warm
        for c in clients:
            c.ask("throughput", 4)
        # Every long-lived thread exists now (OpenMP's team, gRPC's pool, the client's channel).
        pids = [os.getpid()] + [d.proc.pid for d in daemons] + [c.pid for c in clients]
        names = {pid: thread_names(pid) for pid in pids}
        limit_cpu: dict[str, float] = {}  # this process's threads over the limit's chunks
        tput: dict[str, list[dict]] = {"limit": []} | {v["label"]: [] for v in variants} | {k: [] for k in FLOORS}
        lat: dict[str, list[dict]] = {"limit": []} | {v["label"]: [] for v in variants} | {k: [] for k in FLOORS}
        # CPU seconds per thread over the served chunks: {variant: {"daemon" | "client": {thread: s}}}
        cpu: dict[str, dict[str, dict[str, float]]] = {v["label"]: {"daemon": {}, "client": {}} for v in variants}
        t_start = time.perf_counter()
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds} ({time.perf_counter() - t_start:.0f} s)")
            # The limit, then every variant, each chunk starting with a different one.
            order = ["limit", *[v["label"] for v in variants], *FLOORS]
            order = order[r % len(order) :] + order[: r % len(order)]
            for who in order:
                if who == "limit":
                    before_limit = thread_cpu(os.getpid(), names[os.getpid()])
                    tput["limit"].append(limit.run(frames))
                    add_into(limit_cpu, cpu_delta(before_limit, thread_cpu(os.getpid(), names[os.getpid()])))
                elif who in FLOORS:
                    tput[who].append(floor_clients[who].ask("throughput", args.chunk))
                else:
                    i = ord(who) - ord("A")
                    pids = {"daemon": daemons[i].proc.pid, "client": clients[i].pid}
                    before = {side: thread_cpu(pid, names[pid]) for side, pid in pids.items()}
                    tput[who].append(clients[i].ask("throughput", args.chunk))
                    for side, pid in pids.items():
                        add_into(cpu[who][side], cpu_delta(before[side], thread_cpu(pid, names[pid])))
            for who in order:
                if who == "limit":
                    lat["limit"].append(limit.run(lat_frames))
                elif who in FLOORS:
                    lat[who].append(floor_clients[who].ask("latency", args.latency_chunk))
                else:
                    lat[who].append(clients[ord(who) - ord("A")].ask("latency", args.latency_chunk))
            uptime.append(_uptime())
        log("client library, against an in-process stub that answers at once")
        cost = [clients[0].ask("cost", args.cost_frames) for _ in range(3)]
        if len(variants) > 1:
            cost_b = [clients[1].ask("cost", args.cost_frames) for _ in range(3)]
        profile: dict[str, Any] = {}
        if args.profile:
            profile = _profile(args, daemons[0], clients[0], tmp)
            uptime.append(_uptime())
        limit.stop()
    finally:
        for c in clients:
            c.stop()
        for d in daemons:
            d.stop()
        for kind in floors:
            if kind in floor_clients:
                floor_clients[kind].stop()
            floors[kind].stop()

    lim_lat = [x for c in lat["limit"] for x in c["latencies_ms"]]
    lim_inf = [x for c in lat["limit"] for x in c["stages"]["inference"]]
    results["limit"] = {
        "ms_per_frame": sum(c["seconds"] for c in tput["limit"]) * 1e3 / sum(c["frames"] for c in tput["limit"]),
        "stages_ms": _median_stages(tput["limit"]),
        "latency_p50_ms": pct(lim_lat, 50),
        "frames": sum(c["frames"] for c in tput["limit"]),
        "latency_frames": len(lim_lat),
        "cpu_ms_per_frame": per_frame_cpu(limit_cpu, sum(c["frames"] for c in tput["limit"])),
    }
    # The bare floors answer at once: what gRPC Python and the client cost per frame, with no model.
    results["grpc_floor"] = {
        kind: {
            "ms_per_frame": sum(c["seconds"] for c in tput[kind]) * 1e3 / sum(c["frames"] for c in tput[kind]),
            "frames": sum(c["frames"] for c in tput[kind]),
            "latency_p50_ms": pct([x for c in lat[kind] for x in c["latencies_ms"]], 50),
            "latency_frames": sum(len(c["latencies_ms"]) for c in lat[kind]),
        }
        for kind in FLOORS
    }
    results["variants"] = {}
    for v in variants:
        label = v["label"]
        served_lat = [x for c in lat[label] for x in c["latencies_ms"]]
        served_inf = [x for c in lat[label] for x in c["inference_ms"]]
        results["variants"][label] = {
            "ref": v["ref"],
            "env": {k: val for k, val in v["env"].items() if k != "PYTHONPATH"},
            "daemon_threads": v["threads"],
            "daemon_args": list(v.get("args", ())),
            **served_ratios(tput["limit"], tput[label]),
            "served_frames": sum(c["frames"] for c in tput[label]),
            # CPU time, not wall time: what a shared machine's load moves least. Served (daemon + client
            # process, every thread) minus the limit's (this process's threads), per frame.
            "cpu_overhead_ms_per_frame": sum(
                sum(per_frame_cpu(threads, sum(c["frames"] + 1 for c in tput[label])).values())
                for threads in cpu[label].values()
            )
            - sum(results["limit"]["cpu_ms_per_frame"].values()),
            "latency_frames": len(served_lat),
            "served_stages_ms": _median_stages(tput[label]),
            # What each thread spent on a CPU per frame served (the first answer of each chunk counts too).
            "cpu_ms_per_frame": {
                side: per_frame_cpu(threads, sum(c["frames"] + 1 for c in tput[label]))
                for side, threads in cpu[label].items()
            },
            "served_latency_p50_ms": pct(served_lat, 50),
            "added_latency_p50_ms": pct(served_lat, 50) - pct(lim_lat, 50),
            # Each frame's model time taken out on both sides: the model's own time swings most here.
            "added_latency_model_time_out_ms": statistics.median(
                a - b for a, b in zip(served_lat, served_inf, strict=True)
            )
            - statistics.median(a - b for a, b in zip(lim_lat, lim_inf, strict=True)),
        }
    results["client_library"] = _cost_summary(cost)
    if len(variants) > 1:
        results["client_library_B"] = _cost_summary(cost_b)
        a, b = results["variants"]["A"], results["variants"]["B"]
        results["ab"] = {
            "served_over_limit_B_minus_A": b["served_over_limit"] - a["served_over_limit"],
            "overhead_ms_per_frame_B_minus_A": b["overhead_ms_per_frame"] - a["overhead_ms_per_frame"],
            "served_ms_per_frame_B_over_A": b["served_ms_per_frame"] / a["served_ms_per_frame"],
            "added_latency_p50_ms_B_minus_A": b["added_latency_p50_ms"] - a["added_latency_p50_ms"],
        }
    results["profile"] = profile
    results["uptime"] = uptime
    results["wall_s"] = time.perf_counter() - t_start
    shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    (args.out / "frame_cost.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "frame_cost.png")
    log(f"wrote {args.out / 'frame_cost.json'} and {args.out / 'frame_cost.png'}")
    return 0


def _cost_summary(cost: list[dict]) -> dict:
    # The fastest of the repeats (timeit's advice): on a shared machine the others only add preemption.
    best = min(cost, key=lambda c: c["per_frame_ms"])
    return {
        "per_frame_ms": best["per_frame_ms"],
        "stages_ms": best["stages_ms"],
        "repeats_ms": [c["per_frame_ms"] for c in cost],
        "frames": sum(c["frames"] for c in cost),
    }


def _profile(args: argparse.Namespace, daemon: Any, client: ClientProcess, tmp: Path) -> dict:
    """py-spy on the daemon and the client process while the client streams back to back."""
    seconds = args.profile
    log(f"py-spy: {seconds:.0f} s of served frames, daemon pid {daemon.proc.pid}, client pid {client.pid}")
    profilers = {
        "daemon": Profiler(daemon.proc.pid, args.out / "frame_cost.daemon.raw.txt", seconds, args.profile_rate),
        "client": Profiler(client.pid, args.out / "frame_cost.client.raw.txt", seconds, args.profile_rate),
    }
    frames = 0
    t0 = time.perf_counter()
    time.sleep(0.5)  # py-spy attaches
    while time.perf_counter() - t0 < seconds + 1:
        frames += client.ask("throughput", args.chunk)["frames"]
    out = {name: prof.result() for name, prof in profilers.items()}
    gil = Profiler(daemon.proc.pid, args.out / "frame_cost.daemon.gil.raw.txt", seconds, args.profile_rate, gil=True)
    t0 = time.perf_counter()
    time.sleep(0.5)
    while time.perf_counter() - t0 < seconds + 1:
        frames += client.ask("throughput", args.chunk)["frames"]
    out["daemon GIL holder"] = gil.result()
    out["served_frames"] = frames
    out["commands"] = [" ".join(p.cmd) for p in (*profilers.values(), gil)]
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def print_table(results: dict) -> None:
    lim = results["limit"]
    print(f"\nin-process limit {lim['ms_per_frame']:.2f} ms/frame, latency p50 {lim['latency_p50_ms']:.2f} ms")
    lim_cpu = sum(lim["cpu_ms_per_frame"].values())
    print(f"in-process limit CPU {lim_cpu:.2f} ms/frame (all of this process's threads)")
    print(
        f"{'variant':<8}{'served/limit':>13}{'(chunk med)':>12}{'overhead ms/fr':>15}{'added lat p50':>15}"
        f"{'CPU overhead ms/fr':>20}  env/ref"
    )
    for label, v in results["variants"].items():
        print(
            f"{label:<8}{v['served_over_limit']:>13.3f}{v['served_over_limit_chunk_median']:>12.3f}"
            f"{v['overhead_ms_per_frame']:>15.3f}{v['added_latency_p50_ms']:>15.3f}"
            f"{v['cpu_overhead_ms_per_frame']:>20.3f}  {v['env']} {v['daemon_args']} {v['ref']}"
        )
    cl = results["client_library"]
    stages = " ".join(f"{k}={v:.3f}" for k, v in cl["stages_ms"].items())
    print(f"client library per frame (in-process stub): {cl['per_frame_ms']:.3f} ms ({stages})")
    for kind, f in results["grpc_floor"].items():
        print(
            f"client + gRPC to a bare server answering at once ({kind}): {f['ms_per_frame']:.3f} ms/frame, "
            f"one in flight p50 {f['latency_p50_ms']:.3f} ms"
        )
    for u in results["uptime"][:1] + results["uptime"][-1:]:
        print(f"uptime: {u}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = {k: v for k, v in results.get("profile", {}).items() if isinstance(v, dict) and v}
    ncols = 2 + len(profile)
    fig, axes = plt.subplots(1, ncols, figsize=(12 + 6 * len(profile), 5.5), squeeze=False)
    cpu_by_thread(results, axes[0][1])
    ax = axes[0][0]
    # Per frame, back to back: what each stage takes, and the rest (gRPC, hand-offs, the client).
    bars: dict[str, dict[str, float]] = {}
    lim = results["limit"]
    bars["limit (in process)"] = {k: lim["stages_ms"][k] for k in ("decode", "preprocess", "inference")}
    bars["limit (in process)"]["rest"] = lim["ms_per_frame"] - sum(bars["limit (in process)"].values())
    for label, v in results["variants"].items():
        s = v["served_stages_ms"]
        b = {"decode": s["decode"], "preprocess": s["preprocess"], "inference": s["inference_per_frame"]}
        b["rest"] = v["served_ms_per_frame"] - sum(b.values())
        bars[f"served {label}"] = b
    cl = results["client_library"]
    bars["client library\n(stub, no gRPC)"] = dict(cl["stages_ms"])
    for kind, f in results["grpc_floor"].items():
        bars[f"client + gRPC\nbare {kind}"] = {"rest": f["ms_per_frame"]}
    stages = list(dict.fromkeys(k for b in bars.values() for k in b))
    for i, b in enumerate(bars.values()):
        bottom = 0.0
        for j, stage in enumerate(stages):
            val = max(0.0, b.get(stage, 0.0))
            ax.bar(
                i,
                val,
                bottom=bottom,
                color=f"C{j}",
                label=stage if stage not in ax.get_legend_handles_labels()[1] else None,
            )
            bottom += val
    ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax.set_ylabel("ms per frame (back to back, medians)")
    ax.set_title("where a frame's time goes")
    ax.legend(fontsize=7)
    for k, (side, threads) in enumerate(profile.items(), start=2):
        ax = axes[0][k]
        cats = [name for name, _ in CATEGORIES] + ["python (other)"]  # one color per category in every panel
        names = sorted(threads, key=lambda t: -sum(threads[t].values()))[:10]
        for i, t in enumerate(names):
            bottom = 0.0
            total = sum(threads[t].values())
            for j, c in enumerate(cats):
                val = threads[t].get(c, 0) / total if total else 0
                ax.bar(i, val, bottom=bottom, color=f"C{j}", label=c if i == 0 else None)
                bottom += val
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("share of the thread's py-spy samples")
        ax.set_title(f"py-spy per thread: {side}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cpu_by_thread(results: dict, ax: Any) -> None:  # a matplotlib Axes
    """Each variant's daemon and client: CPU ms per served frame, stacked by thread."""
    bars = {
        f"{label} {side}": t for label, v in results["variants"].items() for side, t in v["cpu_ms_per_frame"].items()
    }
    threads = list(dict.fromkeys(k for t in bars.values() for k in t))
    seen: set[str] = set()
    for i, t in enumerate(bars.values()):
        bottom = 0.0
        for j, name in enumerate(threads):
            val = t.get(name, 0.0)
            ax.bar(
                i,
                val,
                bottom=bottom,
                color=f"C{j % 10}",
                hatch="//" if j >= 10 else None,
                label=None if name in seen else name,
            )
            bottom += val
            seen.add(name)
    ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
    ax.set_ylabel("CPU ms per served frame (/proc schedstat)")
    ax.set_title("CPU per frame, by thread (all threads, native ones too)")
    ax.legend(fontsize=6)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
