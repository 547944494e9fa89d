"""Issue 26's hostile-client probe, class by class, against one edgeserver: does any door stay held?

    python -m bench.doors                      # every class, attacker with and without a token (~10 min)
    python -m bench.doors --classes watch big --hold 5 --settle 5   # a quick look
    python -m bench.doors --classes conns --peer-caps 32 0   # the per-peer connection cap, and without it

A daemon with a token file serves SqueezeNet 1.0 (fp32, random weights) on loopback.
For each class of the probe (issue 26's table) an attacker runs for ``--hold`` seconds,
with the token and then without it, while this process measures, from connections
of its own: health Check latency (one every 50 ms), ListModels answered (with the
token), and a camera-like v1 stream's answers and latency (in lockstep: a frame, its
answer, 0.2 s, the next). Then it waits ``--settle``
seconds and reads the daemon's RSS again. Printed per class: health p50/p99, health
and ListModels answered of sent, the canary's answers and p50, the attack's own
calls by status (or frames answered of sent; for conns, the connections opened and closed, and fresh
connections answered), and RSS before / peak / after. The
issue's targets: health p99 <= 100 ms and ListModels answered throughout, RSS after
within baseline + 10 %, no frame lost. Timings are this machine's: run it on a
quiet one, and read medians, not single runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from bench.daemon import DaemonProcess
from bench.stats import log, pct
from edgeinfer.media.sample import synthetic_frame
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import kserve_v2_pb2 as v2

__all__ = ["CLASSES", "main"]

TOKEN = "bench-doors-" + "5f0c9e2b7a41d8836e2fd0a9c4b1e7d3"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
EDGE, HEALTH, V2 = "/edgeinfer.v1.EdgeInference/", "/grpc.health.v1.Health/", "/inference.GRPCInferenceService/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _jpeg(height: int, width: int, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", synthetic_frame(1, height, width), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


GOOD = _jpeg(240, 320)


def _channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _config(policy: int) -> pb.StreamRequest:
    return pb.StreamRequest(
        config=pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=policy)
    )


class Attack:
    """One class of the probe: ``start`` opens its calls, ``stop`` lets them go and says what came back."""

    def __init__(self, target: str, metadata: tuple, stop: threading.Event) -> None:
        self.target, self.metadata, self.stop_event = target, metadata, stop
        self.channels: list[grpc.Channel] = []
        self.calls: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.sent = self.answered = 0
        self.codes: Counter[str] = Counter()
        self.notes: list[str] = []  # what else the class says about itself

    def channel(self) -> grpc.Channel:
        self.channels.append(_channel(self.target))
        return self.channels[-1]

    def silent(self, first: list[Any] = ()) -> Iterator[Any]:  # type: ignore[assignment]
        yield from first
        self.stop_event.wait(600)

    def thread(self, fn: Callable[[], None]) -> None:
        self.threads.append(threading.Thread(target=fn, daemon=True))
        self.threads[-1].start()

    def record(self, call: Any) -> None:
        try:
            code = call.code() if hasattr(call, "code") else call.exception(60).code()
        except Exception as exc:  # a call cancelled here
            code = getattr(exc, "code", lambda: grpc.StatusCode.CANCELLED)()
        self.codes[code.name if code is not None else "OK"] += 1

    def finish(self) -> str:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)
        for c in self.calls:
            if not c.done():
                c.cancel()
            self.record(c)
        for ch in self.channels:
            ch.close()
        calls = ", ".join(f"{k} {v}" for k, v in sorted(self.codes.items()))
        frames = f"frames answered {self.answered}/{self.sent}" if self.sent else ""
        return "; ".join(x for x in (calls, frames, *self.notes) if x)


def watch(a: Attack) -> None:
    """40 grpc.health.v1 Watch calls (health needs no token), 4 on each of 10 connections."""
    for _ in range(10):
        w = a.channel().unary_stream(
            HEALTH + "Watch", request_serializer=health_pb2.HealthCheckRequest.SerializeToString
        )
        a.calls += [w(health_pb2.HealthCheckRequest(), timeout=600) for _ in range(4)]


def reflection(a: Attack) -> None:
    """40 reflection streams that send nothing, 4 on each of 10 connections."""
    for _ in range(10):
        r = a.channel().stream_stream(REFLECTION)
        a.calls += [r(a.silent(), timeout=600, metadata=a.metadata) for _ in range(4)]


def headers(a: Attack) -> None:
    """30 unary calls sent as headers without a body, on one connection (ListModels and Classify)."""
    ch = a.channel()
    for i in range(30):
        m = ch.stream_unary(EDGE + ("ListModels" if i % 2 else "Classify"), request_serializer=lambda x: x)
        a.calls.append(m.future(a.silent(), timeout=600, metadata=a.metadata))


def v2_silent(a: Attack) -> None:
    """16 KServe ModelStreamInfer streams that never send."""
    s = a.channel().stream_stream(V2 + "ModelStreamInfer")
    a.calls += [s(a.silent(), timeout=600, metadata=a.metadata) for _ in range(16)]


def unary_flood(a: Attack, calls: int = 100) -> None:
    """``calls`` Classify calls of 4 MB raw frames at once, on one connection."""
    side = 1155  # 1155 x 1155 x 3: 4.0 MB
    raw = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8).tobytes()
    request = pb.ClassifyRequest(
        model=pb.ModelSelector(name="squeezenet"),
        top_k=1,
        image=pb.Image(raw=pb.RawImage(height=side, width=side, data=raw)),
    ).SerializeToString()
    m = a.channel().unary_unary(EDGE + "Classify", request_serializer=lambda x: x)
    a.calls += [m.future(request, timeout=600, metadata=a.metadata) for _ in range(calls)]


def big(a: Attack) -> None:
    """One `latest` stream of 7 MB frames refused at the header check, whose answers are not read until the end."""
    header = bytes.fromhex("ffd8ffc0001108fde8fde803012200021101031101")  # SOF0: 65000 x 65000
    frame = pb.Image(jpeg=header + bytes(7 << 20))

    def frames() -> Iterator[pb.StreamRequest]:
        yield _config(pb.DROP_POLICY_LATEST)
        while not a.stop_event.is_set():
            a.sent += 1
            yield pb.StreamRequest(frame=pb.Frame(sequence=a.sent - 1, image=frame))

    call = a.channel().stream_stream(
        EDGE + "StreamClassify",
        request_serializer=pb.StreamRequest.SerializeToString,
        response_deserializer=pb.StreamResponse.FromString,
    )(frames(), timeout=600, metadata=a.metadata)

    def read_after() -> None:
        a.stop_event.wait(600)
        try:
            for _ in call:
                a.answered += 1
        except grpc.RpcError as exc:
            a.codes[exc.code().name] += 1

    a.thread(read_after)


def fast(a: Attack, senders: int = 15) -> None:
    """``senders`` streams (policy all) sending as fast as gRPC takes frames; every frame must be answered."""

    def sender() -> None:
        def frames() -> Iterator[pb.StreamRequest]:
            yield _config(pb.DROP_POLICY_ALL)
            seq = 0
            while not a.stop_event.is_set():
                a.sent += 1
                yield pb.StreamRequest(frame=pb.Frame(sequence=seq, image=pb.Image(jpeg=GOOD)))
                seq += 1

        s = a.channel().stream_stream(
            EDGE + "StreamClassify",
            request_serializer=pb.StreamRequest.SerializeToString,
            response_deserializer=pb.StreamResponse.FromString,
        )
        try:
            for _ in s(frames(), timeout=600, metadata=a.metadata):
                a.answered += 1
        except grpc.RpcError as exc:
            a.codes[exc.code().name] += 1

    for _ in range(senders):
        a.thread(sender)


def v2_flood(a: Attack, loops: int = 8) -> None:
    """``loops`` KServe ModelInfer loops of 4096x3072 JPEGs (the canary's latency is what to read)."""
    request = v2.ModelInferRequest(model_name="squeezenet")
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(_jpeg(3072, 4096))
    body = request.SerializeToString()

    def loop() -> None:
        m = a.channel().unary_unary(V2 + "ModelInfer", request_serializer=lambda x: x)
        while not a.stop_event.is_set():
            a.sent += 1
            try:
                m(body, timeout=60, metadata=a.metadata)
                a.answered += 1
            except grpc.RpcError as exc:
                a.codes[exc.code().name] += 1

    for _ in range(loops):
        a.thread(loop)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # and an empty SETTINGS


def _flood(host: str, port: int, sockets: int, stop: Any, report: Any) -> None:
    """In a process of its own (its loop would take this one's GIL from the observer): hold ``sockets``
    raw connections from 127.0.0.2, half after the HTTP/2 preface, half silent, and reopen each one the
    daemon closes at once. Reports (opened, closed by the daemon, open at the end)."""
    held: dict[int, socket.socket] = {}
    poll = select.poll()
    opened = closed = 0
    while not stop.is_set():
        while len(held) < sockets and not stop.is_set():
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect((host, port))
                if opened % 2:
                    s.sendall(PREFACE)
            except OSError:
                s.close()
                break
            opened += 1
            s.setblocking(False)
            held[s.fileno()] = s
            poll.register(s, select.POLLIN)
        for fd, _ in poll.poll(20):
            s = held[fd]
            try:
                ended = s.recv(65536) == b""
            except BlockingIOError:
                ended = False
            except OSError:
                ended = True
            if ended:
                closed += 1
                poll.unregister(fd)
                del held[fd]
                s.close()
    report.send((opened, closed, len(held)))
    for s in held.values():
        s.close()


def conns(a: Attack, sockets: int = 600) -> None:
    """``sockets`` raw TCP connections from 127.0.0.2 (over --max-connections, 512), each reopened as the daemon
    closes it (--max-connections-per-peer); meanwhile a fresh connection every 0.5 s from 127.0.0.1 asks
    ListModels (the attacker with a token: a client's call) or health Check (without: a probe's)."""
    host, port = a.target.rsplit(":", 1)
    spawn = multiprocessing.get_context("spawn")
    stop, (theirs, ours) = spawn.Event(), spawn.Pipe()
    flood = spawn.Process(target=_flood, args=(host, int(port), sockets, stop, theirs), daemon=True)
    flood.start()
    fresh = [0, 0]

    def newcomer() -> None:
        while not a.stop_event.wait(0.5):
            fresh[1] += 1
            with _channel(a.target) as ch:
                if a.metadata:
                    listing = pb.ListModelsRequest.SerializeToString
                    call = ch.unary_unary(EDGE + "ListModels", request_serializer=listing)
                    request: Any = pb.ListModelsRequest()
                else:
                    call = ch.unary_unary(
                        HEALTH + "Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString
                    )
                    request = health_pb2.HealthCheckRequest()
                try:
                    call(request, timeout=5, metadata=a.metadata)
                    fresh[0] += 1
                except grpc.RpcError:
                    pass
        stop.set()
        opened, closed, still = ours.recv() if ours.poll(30) else (0, 0, 0)
        flood.join(30)
        a.notes.append(
            f"opened {opened}, closed by the daemon {closed}, open at the end {still}; "
            f"fresh connections answered {fresh[0]}/{fresh[1]}"
        )

    a.thread(newcomer)


CLASSES: dict[str, Callable[[Attack], None]] = {
    "watch": watch,
    "reflection": reflection,
    "headers": headers,
    "v2-silent": v2_silent,
    "unary-flood": unary_flood,
    "big": big,
    "fast": fast,
    "v2-flood": v2_flood,
    "conns": conns,
}


class Observer:
    """What a well-behaved client sees meanwhile: health checks, ListModels, a camera stream; and the daemon's RSS."""

    def __init__(self, target: str, daemon: DaemonProcess) -> None:
        self.target, self.daemon = target, daemon
        self.stop = threading.Event()
        self.health_ms: list[float] = []
        self.health_sent = self.models_ok = self.models_sent = 0
        self.canary_ms: list[float] = []
        self.rss_peak = daemon.rss_mb()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._health, self._canary, self._rss)]
        for t in self.threads:
            t.start()

    def _health(self) -> None:
        with _channel(self.target) as ch:
            check = ch.unary_unary(HEALTH + "Check", request_serializer=health_pb2.HealthCheckRequest.SerializeToString)
            listing = ch.unary_unary(EDGE + "ListModels", request_serializer=pb.ListModelsRequest.SerializeToString)
            while not self.stop.wait(0.05):
                self.health_sent += 1
                started = time.perf_counter()
                try:
                    check(health_pb2.HealthCheckRequest(), timeout=5)
                    self.health_ms.append((time.perf_counter() - started) * 1e3)
                except grpc.RpcError:
                    pass
                if self.health_sent % 10 == 0:
                    self.models_sent += 1
                    try:
                        listing(pb.ListModelsRequest(), timeout=5, metadata=AUTH)
                        self.models_ok += 1
                    except grpc.RpcError:
                        pass

    def _canary(self) -> None:
        """A camera in lockstep: a frame, its answer, 0.2 s, the next; its latency is the wait behind others'."""
        sent: dict[int, float] = {}
        answered = threading.Event()

        def frames() -> Iterator[pb.StreamRequest]:
            yield _config(pb.DROP_POLICY_ALL)
            seq = 0
            while not self.stop.wait(0.2):
                answered.clear()
                sent[seq] = time.perf_counter()
                yield pb.StreamRequest(frame=pb.Frame(sequence=seq, image=pb.Image(jpeg=GOOD)))
                seq += 1
                while not answered.wait(0.1) and not self.stop.is_set():
                    pass

        with _channel(self.target) as ch:
            s = ch.stream_stream(
                EDGE + "StreamClassify",
                request_serializer=pb.StreamRequest.SerializeToString,
                response_deserializer=pb.StreamResponse.FromString,
            )
            try:
                for r in s(frames(), timeout=900, metadata=AUTH):
                    self.canary_ms.append((time.perf_counter() - sent.pop(r.sequence)) * 1e3)
                    answered.set()
            except grpc.RpcError as exc:
                log(f"the canary stream ended: {exc.code().name} {exc.details()}")
        self.canary_lost = len(sent)

    def _rss(self) -> None:
        while not self.stop.wait(0.1):
            self.rss_peak = max(self.rss_peak, self.daemon.rss_mb())

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def run_class(name: str, token: bool, target: str, daemon: DaemonProcess, hold: float, settle: float) -> dict:
    rss_before = daemon.rss_mb()
    observer = Observer(target, daemon)
    time.sleep(1.0)  # the canary's stream is open
    attack = Attack(target, AUTH if token else (), threading.Event())
    CLASSES[name](attack)
    time.sleep(hold)
    outcome = attack.finish()
    observer.finish()
    time.sleep(settle)
    h = observer.health_ms
    return {
        "class": name,
        "token": token,
        "health p50 ms": pct(h, 50),
        "health p99 ms": pct(h, 99),
        "health": f"{len(h)}/{observer.health_sent}",
        "ListModels": f"{observer.models_ok}/{observer.models_sent}",
        "canary": f"{len(observer.canary_ms)} answered, {getattr(observer, 'canary_lost', 0)} lost, "
        f"p50 {pct(observer.canary_ms, 50):.0f} ms",
        "attack": outcome,
        "RSS MB": f"{rss_before:.0f} / {observer.rss_peak:.0f} / {daemon.rss_mb():.0f}",
        "RSS after": f"{(daemon.rss_mb() / rss_before - 1) * 100:+.0f}%",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", nargs="+", choices=list(CLASSES), default=list(CLASSES))
    p.add_argument("--hold", type=float, default=15.0, help="seconds each attack runs")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after an attack before RSS is read again")
    p.add_argument("--threads", type=int, default=1, help="the daemon's --threads")
    p.add_argument(
        "--peer-caps",
        nargs="+",
        type=int,
        default=[None],
        help="the daemon's --max-connections-per-peer, one daemon each, in turn (default: the daemon's default; "
        "e.g. 32 0: the cap and its baseline without it, in one run)",
    )
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    os.environ["EDGEINFER_TOKEN"] = TOKEN  # the bench's own EdgeClient (DaemonProcess waits with one)
    tmp = Path(tempfile.mkdtemp(prefix="doors-"))
    token_file = tmp / "tokens"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    rows = []
    for cap in args.peer_caps:
        extra = ("--token-file", str(token_file), "--max-streams", "16")
        if cap is not None:
            extra += ("--max-connections-per-peer", str(cap))
        daemon = DaemonProcess(["squeezenet:fp32"], tmp, args.threads, None, 8, extra)
        target = f"127.0.0.1:{daemon.port}"
        try:
            time.sleep(2.0)
            for name in args.classes:
                for token in (True, False):
                    log(f"{name}, attacker {'with' if token else 'without'} a token, peer cap {cap}")
                    rows.append(run_class(name, token, target, daemon, args.hold, args.settle))
                    if len(args.peer_caps) > 1:
                        rows[-1]["class"] += f" (peer cap {cap})"
                    log(str(rows[-1]))
        finally:
            daemon.stop()
    table = _table(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
