"""What TLS, mutual TLS and bearer tokens cost a call, and what verifying an artifact's SHA-256 costs a load.

    python -m bench.security_overhead                  # ~20 s on 2 cores
    python -m bench.security_overhead --rounds 2 --calls 50 --connects 3 --json out.json

One daemon per setting (no models: ``ListModels`` measures the transport and the token check, not
inference), all in this process, certificates made by ``trustme``. Rounds interleave the settings so
that a busy moment on a shared machine lands on all of them. Per setting it prints the median of:
- a unary call on a warm connection (the token interceptor runs on every call; TLS encrypts it);
- a new connection plus its first call (the TLS handshake; a camera stream pays it once).
Then SHA-256 throughput, which sets what the daemon's artifact check adds to loading a model file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trustme

from edgeinfer.client import EdgeClient
from edgeinfer.server.app import Daemon
from edgeinfer.server.security import ServerTls, Tokens

TOKEN = "bench-token-0123456789abcdef"


@contextlib.contextmanager
def daemons(folder: Path) -> Iterator[dict[str, tuple[Daemon, dict[str, object]]]]:
    """Each setting: its daemon and the EdgeClient keywords that reach it."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("bench-client")
    files = {}
    for name, blob in (
        ("ca", ca.cert_pem),
        ("cert", server.cert_chain_pems[0]),
        ("key", server.private_key_pem),
        ("client_cert", client.cert_chain_pems[0]),
        ("client_key", client.private_key_pem),
    ):
        blob.write_to_path(str(folder / f"{name}.pem"))
        files[name] = folder / f"{name}.pem"
    tls = {"tls_ca": files["ca"]}
    mtls = {**tls, "tls_cert": files["client_cert"], "tls_key": files["client_key"]}
    settings = {
        "plaintext": ({}, {}),
        "plaintext + token": ({"tokens": Tokens([TOKEN])}, {"token": TOKEN}),
        "TLS": ({"tls": ServerTls(files["cert"], files["key"])}, tls),
        "TLS + token": (
            {"tls": ServerTls(files["cert"], files["key"]), "tokens": Tokens([TOKEN])},
            {**tls, "token": TOKEN},
        ),
        "mTLS + token": (
            {"tls": ServerTls(files["cert"], files["key"], files["ca"]), "tokens": Tokens([TOKEN])},
            {**mtls, "token": TOKEN},
        ),
    }
    started: dict[str, tuple[Daemon, dict[str, object]]] = {}
    try:
        for name, (server_kwargs, client_kwargs) in settings.items():
            daemon = Daemon(["localhost:0"], **server_kwargs).start()  # type: ignore[arg-type]
            daemon.mark_ready()
            started[name] = (daemon, client_kwargs)
        yield started
    finally:
        for daemon, _ in started.values():
            daemon.stop(grace=0)


def warm_calls(target: str, kwargs: dict[str, object], calls: int) -> list[float]:
    with EdgeClient(target, **kwargs) as client:  # type: ignore[arg-type]
        client.models()  # connect first: only the calls are timed
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            client.models()
            out.append(time.perf_counter() - t)
    return out


def new_connections(target: str, kwargs: dict[str, object], connects: int) -> list[float]:
    out = []
    for _ in range(connects):
        t = time.perf_counter()
        with EdgeClient(target, **kwargs) as client:  # type: ignore[arg-type]
            client.models()
        out.append(time.perf_counter() - t)
    return out


def sha256_mb_per_s(megabytes: int = 64) -> float:
    data = os.urandom(megabytes << 20)
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return megabytes / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    p.add_argument("--calls", type=int, default=200, help="warm calls per setting and round (default: 200)")
    p.add_argument("--connects", type=int, default=10, help="new connections per setting and round (default: 10)")
    p.add_argument("--sha-mb", type=int, default=64, help="MiB hashed to measure SHA-256 (default: 64)")
    p.add_argument("--json", type=Path, help="also write the medians here")
    args = p.parse_args(argv)
    if min(args.rounds, args.calls, args.connects, args.sha_mb) < 1:
        p.error("--rounds, --calls, --connects and --sha-mb must be at least 1")

    warm: dict[str, list[float]] = {}
    connect: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder, daemons(Path(folder)) as settings:
        order = list(settings)
        for r in range(args.rounds):
            random.Random(r).shuffle(order)
            for name in order:
                daemon, kwargs = settings[name]
                target = f"localhost:{daemon.port}"
                warm.setdefault(name, []).extend(warm_calls(target, kwargs, args.calls))
                connect.setdefault(name, []).extend(new_connections(target, kwargs, args.connects))
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)

    base_warm = statistics.median(warm["plaintext"])
    base_connect = statistics.median(connect["plaintext"])
    rows = []
    print(f"{'setting':<20}{'warm call p50':>16}{'vs plaintext':>14}{'new connection p50':>21}{'vs plaintext':>14}")
    for name in settings:
        w, c = statistics.median(warm[name]), statistics.median(connect[name])
        rows.append({"setting": name, "warm_call_ms": w * 1e3, "new_connection_ms": c * 1e3})
        print(f"{name:<20}{w * 1e6:>13.0f} us{w / base_warm:>13.2f}x{c * 1e3:>18.2f} ms{c / base_connect:>13.2f}x")
    mb_s = sha256_mb_per_s(args.sha_mb)
    print(
        f"SHA-256: {mb_s:.0f} MB/s (an int8 SqueezeNet artifact, 1.4 MB: {1.4 / mb_s * 1e3:.1f} ms; "
        f"int8 VGG16, ~138 MB: {138 / mb_s * 1e3:.0f} ms)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "sha256_mb_per_s": mb_s, "args": vars(args) | {"json": str(args.json)}}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
