"""`edgeserver`'s arguments: the parser, its value types, and what is checked before the daemon
listens or loads a model (who may connect, model names, the address and port). Imports no torch,
so ``--help`` and every mistake answer at once."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# Plain constants, no torch: --help stays instant.
from edgeinfer.server.defaults import (
    DEFAULT_CONFIG_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    default_threads,
)
from edgeinfer.server.memory import DEFAULT_MALLOC_ARENAS
from edgeinfer.server.options import Precision, PreprocessOn, WeightsKind, choices
from edgeinfer.server.security import (
    LOOPBACK,
    SecurityConfigError,
    ServerTls,
    Tokens,
    check_exposure,
    tcp_address,
)
from edgeinfer.server.startup_checks import unix_socket_problem

__all__ = ["Exposure", "build_parser", "exposure", "listen_error", "model_args"]


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
        default=default_threads(),
        help=f"intra-op threads for inference, torch's or ONNX Runtime's (default: one below the cores, at least 1: "
        f"{default_threads()} here; all cores stalled a camera stream on a busy board: bench/threads_default.py)",
    )
    p.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="what runs the models: onnxruntime for ONNX artifacts (edgequant --format onnx; no torch needed), "
        "torch for torchvision fp32, CUDA fp16 and TorchScript int8; auto (default): onnxruntime where the "
        "repository has an ONNX artifact of the model and precision, else torch",
    )
    p.add_argument(
        "--malloc-arenas",
        type=_int(0, 1024),
        default=DEFAULT_MALLOC_ARENAS,
        help=f"glibc malloc arenas the daemon may make (default: {DEFAULT_MALLOC_ARENAS}, so that memory freed after "
        "streams end goes back to the system; 0: glibc's own, 8 per core, 0-7%% more frames, keeps more; "
        "MALLOC_ARENA_MAX in the environment wins)",
    )
    p.add_argument("--max-streams", type=_int(1), default=16, help="concurrent streams (default: 16)")
    p.add_argument(
        "--max-connections",
        type=_int(1),
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"connections open at once on each address (default: {DEFAULT_MAX_CONNECTIONS}); the next is closed "
        "as it is accepted (--health-port has its own)",
    )
    p.add_argument(
        "--max-connections-per-peer",
        type=_int(0),
        default=DEFAULT_MAX_CONNECTIONS_PER_PEER,
        help=f"TCP connections one client address may hold open at once (default: "
        f"{DEFAULT_MAX_CONNECTIONS_PER_PEER}; 0: no cap); its newest over it are closed within a quarter second. "
        "Loopback counts too. Clients behind one NAT or proxy share an address: raise it. With --workers, per worker",
    )
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
        "(no fight for cores); 'stream' = each stream's reader, overlapping inference; 'auto' (default): "
        "'stream' on CUDA and when --threads leaves a core free, else 'inference'",
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


def model_args(values: list[str], default_precision: str) -> list[tuple[str, str]]:
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


def listen_error(exc: BaseException, addresses: list[str]) -> str:
    """grpc's bind failure as one line a person can act on."""
    for address in addresses:  # a Unix socket says what is wrong with it (a TCP port may be our own by now)
        problem = unix_socket_problem(Path(address[5:])) if address.startswith("unix:") else None
        if problem:
            return f"cannot listen on {address}: {problem}"
    text = str(exc)
    if "bind" in text.lower() or "address" in text.lower():
        unix = ", or the Unix socket cannot be made there" if any(a.startswith("unix:") for a in addresses) else ""
        return (
            f"cannot listen on {', '.join(addresses)}: the port is in use or the address is not this host's{unix} "
            f"(another edgeserver? pick another --port, or --port 0 for a free one)"
        )
    return f"cannot listen on {', '.join(addresses)}: {text.splitlines()[0] if text else type(exc).__name__}"
