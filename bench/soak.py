"""Soak: N normal camera streams for M minutes beside hostile clients, with the daemon's memory watched.

    python -m bench.soak                                   # 16 streams x 10 minutes (the issue 16 figures)
    python -m bench.soak --streams 4 --minutes 0.2         # quick mode (tests/bench/test_soak.py)

Starts its own ``edgeserver`` (SqueezeNet, seeded random weights, loopback) as a
subprocess, so that its RSS, open file descriptors and threads are read from
/proc without the clients in the same process. Normal streams cycle through
JPEG, raw and shared-memory frames and both drop policies (`latest` at --fps,
`all` in lockstep with its answers); every frame sent on them must be answered.
Beside them, hostile clients loop until the end, each on its own thread:

  huge-declared  a 5 KB JPEG declaring 65000x65000, an elongated raw frame: per-frame INVALID_ARGUMENT
  config-less    streams that send nothing: DEADLINE_EXCEEDED after --config-timeout
  abandoned      streams cancelled mid-way, and streams that send big raw frames and then
                 neither send nor read: DEADLINE_EXCEEDED after --idle-timeout
  shm-tricks     a region shrunk and replaced under live frames; keys naming a symlink, a FIFO, a directory
  garbage        random bytes to every method

Every call's status is counted per case; INTERNAL or UNKNOWN anywhere is a failure.
Health is probed once a second. RSS, fds and threads are sampled every 5 s and
reported at start (after warm-up), at minute 2 (or half-way in a shorter run)
and at the end (clients gone, 3 s later); growth is end over minute 2.

Writes one JSON file (--out) and prints a short table. Bounded: every client
stops at the deadline, every call has a timeout, the daemon is stopped with
SIGTERM (and killed if it outlives its drain).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.daemon import DaemonProcess
from edgeinfer.client import EdgeClient
from edgeinfer.media.sample import synthetic_frame
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc

SERVICE = "/edgeinfer.v1.EdgeInference/"
BAD = ("INTERNAL", "UNKNOWN")
CONFIG_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 10.0  # short, so abandoned streams come and go; long enough for a starved client


# -- the daemon under test ------------------------------------------------------------------


class Daemon(DaemonProcess):
    """The shared bench daemon (bench/daemon.py) with the soak's limits, sampled from /proc."""

    def __init__(self, max_streams: int, threads: int) -> None:
        limits = ("--max-streams", str(max_streams), "--config-timeout", str(CONFIG_TIMEOUT_S))
        limits += ("--idle-timeout", str(IDLE_TIMEOUT_S))
        super().__init__(["squeezenet"], Path(tempfile.mkdtemp(prefix="soak-")), threads, None, 8, limits)
        self.target = f"127.0.0.1:{self.port}"

    def sample(self) -> dict[str, float]:
        pid = self.proc.pid
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return {
            "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]),
        }

    def stop(self) -> int | None:  # type: ignore[override]
        """SIGTERM, then its exit status (None: it had to be killed)."""
        super().stop()
        return None if self.proc.returncode == -signal.SIGKILL else self.proc.returncode


# -- the clients -----------------------------------------------------------------------------


class Tally:
    """What every client saw, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.answered = 0
        self.kinds: Counter[str] = Counter()
        self.cases: dict[str, Counter[str]] = {}

    def frames(self, sent: int, answers: list[str]) -> None:
        with self._lock:
            self.sent += sent
            self.answered += len(answers)
            self.kinds.update(answers)

    def status(self, case: str, code: str) -> None:
        with self._lock:
            self.cases.setdefault(case, Counter())[code] += 1


def _code(exc: grpc.RpcError | None) -> str:
    return "OK" if exc is None else exc.code().name  # type: ignore[union-attr]


def _declaring(data: bytes, height: int, width: int) -> bytes:
    b = bytearray(data)
    sof = b.index(b"\xff\xc0")
    b[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(b)


FRAME = synthetic_frame(3, 160, 120)
JPEG = cv2.imencode(".jpg", FRAME)[1].tobytes()


def normal_stream(i: int, target: str, end: float, fps: float, tally: Tally) -> None:
    """One camera: stream i's encoding and policy cycle, so every kind runs."""
    encoding = ("jpeg", "raw", "shm")[i % 3]
    policy = "latest" if i % 2 == 0 else "all"
    answers: list[str] = []
    sent = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal sent
        while time.monotonic() < end:
            started = time.monotonic()
            yield FRAME
            sent += 1
            if policy == "all":  # lockstep: no backlog beyond one frame on a saturated machine
                while len(answers) < sent and time.monotonic() < end + 60:
                    time.sleep(0.002)
            time.sleep(max(0.0, 1 / fps - (time.monotonic() - started)))

    with EdgeClient(target) as client:
        try:
            for r in client.stream(frames(), drop_policy=policy, encoding=encoding, top_k=3, timeout=None):
                answers.append(r.kind)
            tally.status("normal", "OK")
        except Exception as exc:
            tally.status("normal", getattr(getattr(exc, "code", None), "name", type(exc).__name__))
    tally.frames(sent, answers)


def _loop(end: float, pause: float, body: Callable[[], None]) -> None:
    while time.monotonic() < end:
        body()
        time.sleep(pause)


def huge_declared(target: str, end: float, tally: Tally) -> None:
    huge = pb.Image(jpeg=_declaring(JPEG, 65000, 65000))
    elongated = pb.Image(raw=pb.RawImage(height=1, width=8000, data=bytes(24000)))
    good = pb.Image(jpeg=JPEG)
    images = [huge, good, elongated, huge, good]
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_ALL)
    )
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)

        def once() -> None:
            frames = [pb.StreamRequest(frame=pb.Frame(sequence=n, image=im)) for n, im in enumerate(images)]
            answers: list[str] = []
            try:
                for a in stub.StreamClassify(iter([config, *frames]), timeout=60):
                    answers.append(a.WhichOneof("result"))
                    if a.HasField("error"):
                        tally.status("huge-declared", grpc.StatusCode(_by_number(a.error.code)).name)
                tally.status("huge-declared", "OK")
            except grpc.RpcError as exc:
                tally.status("huge-declared", _code(exc))
            tally.frames(len(frames), answers)
            try:
                stub.Classify(
                    pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=huge), timeout=10
                )
                tally.status("huge-declared-unary", "OK")
            except grpc.RpcError as exc:
                tally.status("huge-declared-unary", _code(exc))

        _loop(end, 0.5, once)


def _by_number(n: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == n)


def config_less(target: str, end: float, tally: Tally, at_once: int = 3) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EdgeInferenceStub(ch)

        def once() -> None:
            gate = threading.Event()

            def nothing() -> Iterator[pb.StreamRequest]:
                gate.wait(30)
                return
                yield  # a generator that sends nothing

            calls = [stub.StreamClassify(nothing(), timeout=30) for _ in range(at_once)]
            for call in calls:
                try:
                    list(call)
                    tally.status("config-less", "OK")
                except grpc.RpcError as exc:
                    tally.status("config-less", _code(exc))
            gate.set()

        _loop(end, 0.5, once)


def abandoned(target: str, end: float, tally: Tally) -> None:
    big = pb.Image(raw=pb.RawImage(height=1000, width=1000, data=bytes(3_000_000)))  # 3 MB frames
    config = pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_LATEST)
    )
    turn = 0

    def once() -> None:
        nonlocal turn
        turn += 1
        gate = threading.Event()

        def frames(n: int) -> Iterator[pb.StreamRequest]:
            yield config
            for k in range(n):
                yield pb.StreamRequest(frame=pb.Frame(sequence=k, image=big))
            gate.wait(IDLE_TIMEOUT_S * 3)

        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.EdgeInferenceStub(ch)
            call = stub.StreamClassify(frames(6), timeout=IDLE_TIMEOUT_S * 4)
            if turn % 2:  # walks away: one answer read, then the call is cancelled
                with contextlib.suppress(grpc.RpcError, StopIteration):
                    next(call)
                call.cancel()
                tally.status("abandoned-cancelled", "CANCELLED")
            else:  # goes silent: sends, then neither sends nor reads; the daemon ends it
                time.sleep(IDLE_TIMEOUT_S + 2)
                try:
                    for _ in call:
                        pass
                    tally.status("abandoned-silent", "OK")
                except grpc.RpcError as exc:
                    tally.status("abandoned-silent", _code(exc))
            gate.set()

    _loop(end, 0.2, once)


def shm_tricks(target: str, end: float, tally: Tally) -> None:
    h, w = 120, 160
    slot = h * w * 3
    root = Path("/dev/shm")
    name = f"edgeinfer-soak-{os.getpid()}"
    turn = 0

    def once() -> None:
        nonlocal turn
        turn += 1
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.EdgeInferenceStub(ch)
            if turn % 2:  # a real region, shrunk and replaced under live frames
                path = root / f"{name}-{turn}"
                path.write_bytes(FRAME.tobytes() * 4)  # a POSIX shared-memory object is a file in /dev/shm
                stop = threading.Event()

                def meddle() -> None:
                    k = 0
                    while not stop.is_set():
                        k += 1
                        with contextlib.suppress(OSError):
                            if k % 3 == 0:
                                os.truncate(path, 0)
                            elif k % 3 == 1:
                                os.truncate(path, slot * 4)
                            else:
                                path.unlink()
                                path.write_bytes(bytes(slot * 4))
                        time.sleep(0.005)

                config = pb.StreamRequest(
                    config=pb.StreamConfig(
                        model=pb.ModelSelector(name="squeezenet"),
                        top_k=1,
                        drop_policy=pb.DROP_POLICY_ALL,
                        shared_memory=pb.SharedMemoryRegion(key="/" + path.name, byte_size=slot * 4),
                    )
                )
                frames = [
                    pb.StreamRequest(
                        frame=pb.Frame(
                            sequence=k,
                            image=pb.Image(
                                shared_memory=pb.SharedMemoryImage(offset=(k % 4) * slot, height=h, width=w)
                            ),
                        )
                    )
                    for k in range(8)
                ]
                # The meddling starts once the stream is open (its config checks the object's size).
                meddler = threading.Thread(target=meddle, daemon=True)
                answers: list[str] = []
                try:
                    for a in stub.StreamClassify(iter([config, *frames]), timeout=60):
                        answers.append(a.WhichOneof("result"))
                        if len(answers) == 1:
                            meddler.start()
                    tally.status("shm-shrunk", "OK")
                except grpc.RpcError as exc:
                    tally.status("shm-shrunk", _code(exc))
                finally:
                    stop.set()
                    if meddler.is_alive():
                        meddler.join()
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                tally.frames(len(frames), answers)
            else:  # keys that name no plain object
                path = root / f"{name}-odd"
                kind = ("symlink", "fifo", "dir")[(turn // 2) % 3]
                if kind == "symlink":
                    path.symlink_to("/dev/zero")
                elif kind == "fifo":
                    os.mkfifo(path)
                else:
                    path.mkdir()
                try:
                    config = pb.StreamRequest(
                        config=pb.StreamConfig(
                            model=pb.ModelSelector(name="squeezenet"),
                            top_k=1,
                            shared_memory=pb.SharedMemoryRegion(key="/" + path.name, byte_size=4096),
                        )
                    )
                    list(stub.StreamClassify(iter([config]), timeout=10))
                    tally.status(f"shm-{kind}", "OK")
                except grpc.RpcError as exc:
                    tally.status(f"shm-{kind}", _code(exc))
                finally:
                    if kind == "dir":
                        path.rmdir()
                    else:
                        path.unlink()

    _loop(end, 0.3, once)


def garbage(target: str, end: float, tally: Tally) -> None:
    rng = random.Random(0)
    methods = [SERVICE + "Classify", SERVICE + "GetModel", SERVICE + "ListModels", "/grpc.health.v1.Health/Check"]
    with grpc.insecure_channel(target) as ch:

        def once() -> None:
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
            for m in methods:
                try:
                    ch.unary_unary(m)(b"\xff\xff" + junk, timeout=10)
                    tally.status("garbage-unary", "OK")
                except grpc.RpcError as exc:
                    tally.status("garbage-unary", _code(exc))
            try:
                list(ch.stream_stream(SERVICE + "StreamClassify")(iter([b"\x0a\xff" + junk]), timeout=10))
                tally.status("garbage-stream", "OK")
            except grpc.RpcError as exc:
                tally.status("garbage-stream", _code(exc))

        _loop(end, 0.2, once)


def health_probe(target: str, end: float, tally: Tally) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def once() -> None:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
                tally.status("health", health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
            except grpc.RpcError as exc:
                tally.status("health", _code(exc))

        _loop(end, 1.0, once)


HOSTILE = {
    "huge-declared": huge_declared,
    "config-less": config_less,
    "abandoned": abandoned,
    "shm-tricks": shm_tricks,
    "garbage": garbage,
    "health": health_probe,
}


# -- the run ---------------------------------------------------------------------------------


def run(streams: int, minutes: float, fps: float, threads: int) -> dict:
    duration = minutes * 60
    checkpoint_s = min(120.0, duration / 2)
    # Room for the normal streams, three config-less ones, and the other hostile clients' streams.
    daemon = Daemon(max_streams=streams + 8, threads=threads)
    tally = Tally()
    samples: list[dict[str, float]] = []
    try:
        # Warm-up: one frame of each kind, so that "start" is the daemon as it serves, not as it loaded.
        with EdgeClient(daemon.target, timeout=60) as c:
            for encoding in ("jpeg", "raw", "shm"):
                list(c.stream([FRAME, FRAME], encoding=encoding, drop_policy="all"))
        start = {"t_s": 0.0, **daemon.sample()}
        t0 = time.monotonic()
        end = t0 + duration
        workers = [
            threading.Thread(target=normal_stream, args=(i, daemon.target, end, fps, tally), daemon=True)
            for i in range(streams)
        ] + [threading.Thread(target=f, args=(daemon.target, end, tally), daemon=True) for f in HOSTILE.values()]
        for t in workers:
            t.start()
        checkpoint: dict[str, float] | None = None
        while any(t.is_alive() for t in workers):
            now = time.monotonic() - t0
            samples.append({"t_s": round(now, 1), **daemon.sample()})
            if checkpoint is None and now >= checkpoint_s:
                checkpoint = samples[-1]
            time.sleep(min(5.0, max(0.5, duration / 20)))
            if now > duration + 120:
                raise SystemExit("soak: clients still running 2 minutes after the deadline")
        time.sleep(3)  # the daemon lets go of what the last clients held
        final = {"t_s": round(time.monotonic() - t0, 1), **daemon.sample()}
        if checkpoint is None:
            checkpoint = samples[len(samples) // 2]
        alive = daemon.proc.poll() is None
    finally:
        rc = daemon.stop()
    bad = {case: {c: n for c, n in codes.items() if c in BAD} for case, codes in tally.cases.items()}
    bad = {case: codes for case, codes in bad.items() if codes}
    growth = (final["rss_mb"] - checkpoint["rss_mb"]) / checkpoint["rss_mb"] * 100
    result = {
        "streams": streams,
        "minutes": minutes,
        "fps": fps,
        "daemon_threads_flag": threads,
        "cpu_count": os.cpu_count(),
        "frames_sent": tally.sent,
        "frames_answered": tally.answered,
        "answers": dict(tally.kinds),
        "cases": {case: dict(codes) for case, codes in sorted(tally.cases.items())},
        "internal_or_unknown": bad,
        "daemon_alive_at_end": alive,
        "daemon_exit_code": rc,
        "rss_mb": {"start": start["rss_mb"], "minute2": checkpoint["rss_mb"], "end": final["rss_mb"]},
        "checkpoint_s": checkpoint["t_s"],
        "rss_growth_pct": round(growth, 2),
        "fds": {"start": start["fds"], "minute2": checkpoint["fds"], "end": final["fds"]},
        "threads": {"start": start["threads"], "minute2": checkpoint["threads"], "end": final["threads"]},
        "samples": samples,
    }
    result["ok"] = bool(
        tally.sent == tally.answered
        and not bad
        and alive
        and rc == 0
        and growth < 5.0
        and tally.cases.get("health", Counter()).keys() <= {"SERVING"}
        and tally.cases.get("normal", Counter()) == Counter({"OK": streams})
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=16, help="normal camera streams (default: 16)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (default: 10)")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second per normal stream (default: 4)")
    p.add_argument("--threads", type=int, default=2, help="the daemon's --threads (default: 2)")
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.json"), help="where the JSON goes")
    args = p.parse_args(argv)
    if args.streams < 1 or args.minutes <= 0 or args.fps <= 0 or args.threads < 1:
        p.error("--streams, --minutes, --fps and --threads must be positive")
    result = run(args.streams, args.minutes, args.fps, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"soak: {args.streams} streams x {args.minutes:g} min, hostile clients beside them")
    print(f"  frames sent {result['frames_sent']}, answered {result['frames_answered']} {result['answers']}")
    print(f"  {'':8} {'start':>8} {'minute2':>8} {'end':>8}")
    for key in ("rss_mb", "fds", "threads"):
        v = result[key]
        print(f"  {key:8} {v['start']:8.1f} {v['minute2']:8.1f} {v['end']:8.1f}")
    print(f"  RSS growth minute 2 -> end: {result['rss_growth_pct']:+.2f}%")
    for case, codes in result["cases"].items():
        print(f"  {case:22} {codes}")
    print(f"  INTERNAL/UNKNOWN: {result['internal_or_unknown'] or 'none'}; ok: {result['ok']}; JSON: {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
