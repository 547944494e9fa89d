"""Where a process's CPU goes, per thread: /proc schedstat (native threads included) and py-spy's stacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.stats import log

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
        ("_read_stream", "stream reader"),
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
