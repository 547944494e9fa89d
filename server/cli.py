"""`edgeserver`: the daemon's command line.

    edgeserver --model squeezenet --weights random --seed 0
    edgeserver --model squeezenet --precision int8 --repository model-repo/
    edgeserver --model resnet50 --device cuda            # fp16, channels_last
    edgeserver --model squeezenet --host 0.0.0.0 --tls-cert server.pem --tls-key server.key --token-file tokens

Heavy imports (torch) happen inside main(), after the arguments are parsed, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# Plain constants, no torch: --help stays instant.
from edgeinfer.server.defaults import (
    DEFAULT_CONFIG_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)
from edgeinfer.server.options import Precision, PreprocessOn, WeightsKind, choices
from edgeinfer.server.security import (
    LOOPBACK,
    SecurityConfigError,
    ServerTls,
    Tokens,
    check_exposure,
    tcp_address,
)

__all__ = ["Exposure", "build_parser", "exposure", "main"]

log = logging.getLogger("edgeinfer.server")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if n < low or (high is not None and n > high):
            span = f"{low}..{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {n}")
        return n

    return parse


def _float(low: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not x >= low or x == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number of at least {low:g}, got {value}")
        return x

    return parse


def _placement(text: str) -> str:
    """A --preprocess-on value; 'worker', the inference placement's first name, still works."""
    try:
        return PreprocessOn(text).value
    except ValueError:
        raise argparse.ArgumentTypeError(f"choose one of {', '.join(choices(PreprocessOn))}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edgeserver",
        description="Stream camera frames through ImageNet classifiers over gRPC and answer with top-k.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME[:PRECISION]",
        help="model to serve (repeatable): squeezenet (=squeezenet1_0), squeezenet1_1, vgg16, "
        "inception_v3, resnet50; ':int8' etc. overrides --precision for that one",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=choices(Precision),
        help="auto = fp32 on cpu, fp16 on cuda; int8 loads an edgequant artifact from --repository",
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help=f"'{WeightsKind.IMAGENET}' (torch hub cache, else download), a state_dict PATH, or "
        f"'{WeightsKind.RANDOM}' (seeded by --seed)",
    )
    p.add_argument("--seed", type=_int(0), default=0, help="seed for --weights random (default: 0)")
    p.add_argument("--repository", type=Path, default=Path("model-repo"), help="int8 artifacts folder")
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: loopback only, 127.0.0.1 and ::1); any other (0.0.0.0, [::], "
        "a LAN address) needs --tls-cert/--tls-key, or --insecure",
    )
    p.add_argument("--port", type=_int(0, 65535), default=50051, help="TCP port (0 picks a free one; default: 50051)")
    p.add_argument(
        "--unix-socket",
        type=Path,
        help="also listen on this Unix domain socket (same-host clients; plaintext even with TLS: the socket "
        "file's permissions decide who may connect)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS on every TCP address: certificate chain")
    p.add_argument(
        "--tls-key",
        type=Path,
        metavar="PEM",
        help="the certificate's private key (both files are re-read when they change, or on SIGHUP)",
    )
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: refuse, at the handshake, clients without a certificate signed by this CA",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="bearer tokens, one a line ('#' comments): every call but health checks needs "
        "'authorization: Bearer <token>' (re-read on SIGHUP)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback --host: anyone on that network can read frames and tokens",
    )
    p.add_argument(
        "--health-port",
        type=_int(1, 65535),
        default=None,
        help="also serve grpc.health.v1 alone, in plaintext, on --host at this port: for Kubernetes' gRPC probes, "
        "which cannot speak TLS (default: off)",
    )
    p.add_argument(
        "--threads",
        type=_int(1),
        default=os.cpu_count() or 1,
        help="torch intra-op threads for inference (default: all cores)",
    )
    p.add_argument("--max-streams", type=_int(1), default=16, help="concurrent streams (default: 16)")
    p.add_argument(
        "--max-frame-bytes",
        type=_int(1),
        default=8 << 20,
        help="largest frame accepted, JPEG or raw (default: 8 MiB); larger ones get RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-pixels",
        type=_int(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"most pixels a frame may declare, read from its header before decoding (default: {DEFAULT_MAX_PIXELS}"
        ", 4096x3072: a 4K camera or a 12 MP sensor); more is a per-frame INVALID_ARGUMENT",
    )
    p.add_argument(
        "--max-side",
        type=_int(1),
        default=DEFAULT_MAX_SIDE,
        help=f"longest side a frame may declare, in pixels (default: {DEFAULT_MAX_SIDE})",
    )
    p.add_argument(
        "--config-timeout",
        type=_seconds(allow_zero=False),
        default=DEFAULT_CONFIG_TIMEOUT_S,
        help=f"seconds a new stream has to send its config before it is ended (default: {DEFAULT_CONFIG_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds(allow_zero=True),
        default=DEFAULT_IDLE_TIMEOUT_S,
        help="seconds a stream may neither send a frame nor take an answer before it is ended "
        f"(default: {DEFAULT_IDLE_TIMEOUT_S:g}; 0: never)",
    )
    p.add_argument(
        "--max-shm-bytes",
        type=_int(0),
        default=256 << 20,
        help="largest shared-memory region a same-host stream may map (default: 256 MiB; 0: refuse shared memory)",
    )
    p.add_argument("--max-batch", type=_int(1, 1024), default=8, help="most frames batched across streams (default: 8)")
    p.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=None,
        metavar="N,N,...",
        help="batch sizes to run, up to --max-batch (default: on the CPU the sizes measured at load to be "
        "cheaper per frame than single frames; on CUDA the powers of two)",
    )
    p.add_argument(
        "--preprocess-on",
        default="auto",
        type=_placement,
        choices=choices(PreprocessOn),
        help="where frames are decoded: 'inference' = the model's inference thread, serialized with it "
        "(CPU default: no fight for cores); 'stream' = each stream's reader, overlapping inference "
        "(CUDA default; on a CPU with spare cores pair it with --threads below the core count)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=_float(0.0),
        default=0.0,
        help="longest a frame waits, from its arrival, for others to batch with (default: 0, never wait)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA: record each batch size's forward pass once as a CUDA graph and replay it (one launch "
        "instead of one per kernel: lower latency for small batches; more GPU memory, longer start)",
    )
    p.add_argument(
        "--workers",
        type=_int(1, 64),
        default=1,
        help="daemon processes sharing --port (SO_REUSEPORT; each loads the models; the kernel spreads "
        "connections by a hash, so a few streams often land unevenly): past one process's Python ceiling "
        "on a GPU box with spare cores and many streams (default: 1)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers for its processes
    p.add_argument("--metrics-port", type=_int(0, 65535), default=0, help="Prometheus /metrics port (0: off)")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics listens on (default: 127.0.0.1; plain HTTP without authentication)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the daemon's log messages on stderr at or above this level (default: info)",
    )
    return p


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            s = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
        if not math.isfinite(s) or s < 0 or (s == 0 and not allow_zero) or s > 86_400:
            low = "0 (off) or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {low}, and at most 86400 seconds; got {value}")
        return s

    return parse


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes like 1,4,8, got {value!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 1024:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {value!r}")
    return sizes


def _model_args(values: list[str], default_precision: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, _, precision = value.partition(":")
        out.append((name, precision or default_precision))
    return out


@dataclass
class Exposure:
    """Where the daemon listens and who may call it, checked before anything loads."""

    addresses: list[str]
    tls: ServerTls | None
    tokens: Tokens | None
    plaintext_exposed: list[str]  # non-loopback addresses served in plaintext (--insecure)


def exposure(args: argparse.Namespace) -> Exposure:
    """The listening addresses, TLS and tokens the flags ask for; SecurityConfigError when they cannot work."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SecurityConfigError("--tls-cert and --tls-key go together: the certificate and its private key")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise SecurityConfigError("--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key")
    addresses = [tcp_address(args.host or LOOPBACK, args.port)]
    if args.unix_socket:
        addresses.append(f"unix:{args.unix_socket}")
    tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert is not None else None
    exposed = check_exposure(addresses, tls=tls is not None, insecure=args.insecure)
    tokens = Tokens.from_file(args.token_file) if args.token_file is not None else None
    return Exposure(addresses, tls, tokens, exposed)


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What argparse cannot see alone: model names, their precisions, the address. Before listening or loading."""
    from edgeinfer.server.errors import EdgeInferError
    from edgeinfer.server.registry import get_spec

    for name, precision in _model_args(args.model, args.precision):
        try:
            get_spec(name)
        except EdgeInferError as exc:
            parser.error(f"argument --model: {exc.details}")
        if precision not in choices(Precision):
            known = "/".join(choices(Precision))
            parser.error(f"argument --model: unknown precision {precision!r} in {name}:{precision}; use {known}")
    if args.batch_sizes and max(args.batch_sizes) > args.max_batch:
        parser.error(f"argument --batch-sizes: {max(args.batch_sizes)} is over --max-batch {args.max_batch}")
    given = args.host or LOOPBACK
    host = given.strip("[]")
    if not host or any(c.isspace() for c in host):
        parser.error(f"argument --host: {given!r} is not a host name or address")
    if given not in ("[::]", "0.0.0.0", "::") and not given.startswith("["):
        try:  # a name that does not resolve would only fail at bind, as "Failed to bind"
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError) as exc:
            parser.error(f"argument --host: cannot resolve {given!r} ({exc})")
    if args.worker_index is None:  # --workers' processes share the port on purpose
        problem = _bind_problem(host, args.port)
        if problem:
            parser.error(f"cannot listen on {given}:{args.port}: {problem}")


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (a trial bind, as grpc binds: SO_REUSEADDR), or None.

    Asked before torch is imported and models load, so a busy port is one line at once,
    not grpc's own log line and a failure seconds later.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host!r} ({exc})"
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} is in use (another edgeserver? pick another --port, or --port 0 for a free one)"
                    )
                if exc.errno == errno.EADDRNOTAVAIL:
                    return (
                        f"{host} is not an address of this host (--host: an address of this machine, or [::] for all)"
                    )
                return exc.strerror or str(exc)
    return None


def _listen_error(exc: BaseException, addresses: list[str]) -> str:
    """grpc's bind failure as one line a person can act on."""
    text = str(exc)
    if "bind" in text.lower() or "address" in text.lower():
        return (
            f"cannot listen on {', '.join(addresses)}: the port is in use or the address is not this host's "
            f"(another edgeserver? pick another --port, or --port 0 for a free one)"
        )
    return f"cannot listen on {', '.join(addresses)}: {text.splitlines()[0] if text else type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    worker = args.worker_index is not None
    try:  # who may connect first: it needs no model code
        security = exposure(args)
    except SecurityConfigError as exc:
        print(f"edgeserver: error: {exc}", file=sys.stderr)
        return 2
    _check(args, parser)
    if security.plaintext_exposed and not worker:  # said once, by the supervisor of --workers
        print(
            f"edgeserver: --insecure: serving {', '.join(security.plaintext_exposed)} in plaintext: anyone on that "
            f"network can read frames and answers{' and bearer tokens' if security.tokens else ''}",
            flush=True,
        )
    daemon = None
    # `kill -HUP <pid>`: re-read the TLS files (also re-read on their own when they change) and the tokens.
    # Installed before the slow imports: SIGHUP's default action would end the process.
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_credentials() if daemon is not None else None)
    if args.workers != 1:
        from edgeinfer.server.workers import run_workers

        return run_workers(argv, args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    import torch

    from edgeinfer.server.app import Daemon
    from edgeinfer.server.errors import EdgeInferError
    from edgeinfer.server.limits import FrameLimits
    from edgeinfer.server.loading import load_model
    from edgeinfer.server.weights import WeightsSource

    torch.set_num_threads(max(1, args.threads))
    # The inter-op pool stays at torch's default: the TorchScript executor of int8
    # artifacts uses it, and capping it at 1 made them slower (bench/results/README.md).

    started = time.perf_counter()

    def listen() -> Daemon:
        try:
            d = Daemon(
                security.addresses,
                max_streams=args.max_streams,
                max_frame_bytes=args.max_frame_bytes,
                max_shm_bytes=args.max_shm_bytes,
                max_pixels=args.max_pixels,
                max_side=args.max_side,
                config_timeout=args.config_timeout,
                idle_timeout=args.idle_timeout,
                reuse_port=worker,
                health_addresses=[tcp_address(args.host or LOOPBACK, args.health_port)]
                if args.health_port is not None
                else (),
                tls=security.tls,
                tokens=security.tokens,
                insecure=args.insecure,
            ).start()
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            print(f"edgeserver: error: {_listen_error(exc, security.addresses)}", file=sys.stderr)
            sys.exit(2)
        print(f"edgeserver: listening on {', '.join(d.listening)}{'' if worker else ' (loading models)'}", flush=True)
        return d

    # A daemon listens at once and answers NOT_SERVING while it loads. A worker of
    # --workers listens once loaded: the kernel would hand it connections meanwhile.
    daemon = None if worker else listen()

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # `kill -USR1 <pid>`: every thread's Python stack to stderr, for a daemon that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    weights = WeightsSource.parse(args.weights, seed=args.seed)
    loaded = []
    try:
        for name, precision in _model_args(args.model, args.precision):
            model = load_model(
                name,
                precision=precision,
                device=args.device,
                weights=weights,
                repository=args.repository,
                max_frame_bytes=args.max_frame_bytes,
                limits=FrameLimits(args.max_frame_bytes, args.max_pixels, args.max_side),
                max_batch=args.max_batch,
                max_wait_ms=args.batch_wait_ms,
                batch_sizes=args.batch_sizes,
                preprocess_on=args.preprocess_on,
                cuda_graphs=args.cuda_graphs,
            )
            loaded.append(model)
            if daemon is not None:
                daemon.add_model(model)
            print(
                f"edgeserver: loaded {model.name} {model.precision} on {model.device} "
                f"(weights {model.weights}, input {model.input_size}x{model.input_size}, "
                f"batch sizes {list(model.scheduler.batch_sizes)}, preprocessing on the {model.preprocess_on} thread"
                f"{', CUDA graphs' if args.cuda_graphs else ''})",
                flush=True,
            )
            if stop.is_set():
                break
    except EdgeInferError as exc:
        print(f"edgeserver: error: {exc.details}", file=sys.stderr)
        if daemon is not None:
            daemon.stop(0)  # and the models it holds
        else:
            for model in loaded:
                model.stop()
        return 2
    if daemon is None:
        daemon = listen()
        for model in loaded:
            daemon.add_model(model)
    daemon.mark_ready()
    print(f"edgeserver: SERVING after {time.perf_counter() - started:.1f} s; Ctrl-C to stop", flush=True)
    _wait_for_signal(stop)
    print("edgeserver: draining", flush=True)
    # The drain's hard deadline: whatever hangs (a model that never returns, a thread
    # that will not join at exit), the process is gone this long after the signal. A
    # second SIGTERM or Ctrl-C ends it at once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: _exit_now("a second signal during the drain"))
    deadline = threading.Timer(HARD_DEADLINE_S, _exit_now, (f"the drain passed its {HARD_DEADLINE_S:g} s deadline",))
    deadline.daemon = True
    deadline.start()
    daemon.stop(grace=DRAIN_S)
    busy = daemon.busy_handlers(timeout=DRAIN_S)
    if busy:  # a call blocked for good (a model that never returns) would keep the process alive
        print(f"edgeserver: exiting with {len(busy)} calls still running after the drain", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 0


def _wait_for_signal(stop: threading.Event) -> None:
    """Until SIGTERM or SIGINT has set ``stop``, waking twice a second.

    Python runs a signal's handler on the main thread, between bytecodes; a wait
    without a timeout is cut short only if the signal wakes the main thread. In a
    CUDA daemon (H200, torch 2.11) it did not: SIGTERM's handler never ran and the
    main thread slept on in ``stop.wait()`` (its stack, dumped with SIGUSR1) until
    the daemon was killed; the CPU daemon was never caught so. Waking every 0.5 s
    runs a pending handler within half a second, whichever thread took the signal.
    """
    while not stop.wait(0.5):
        pass


def _exit_now(why: str) -> None:
    print(f"edgeserver: exiting now: {why}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


DRAIN_S = 5.0  # on SIGTERM open calls get this long to finish, and stuck handlers as long again
HARD_DEADLINE_S = 3 * DRAIN_S  # then the process exits whatever still runs (models stopping included)


if __name__ == "__main__":
    sys.exit(main())
