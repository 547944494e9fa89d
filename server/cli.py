"""`edgeserver`: the daemon's command line.

    edgeserver --model squeezenet --weights random --seed 0
    edgeserver --model squeezenet --precision int8 --repository model-repo/
    edgeserver --model resnet50 --device cuda            # fp16, channels_last

Heavy imports (torch) happen inside main(), after the arguments are parsed, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Plain constants, no torch: --help stays instant.
from edgeinfer.server.defaults import (
    DEFAULT_CONFIG_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("edgeinfer.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        choices=["auto", "fp32", "fp16", "int8"],
        help="auto = fp32 on cpu, fp16 on cuda; int8 loads an edgequant artifact from --repository",
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (torch hub cache, else download), a state_dict PATH, or 'random' (needs --seed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    p.add_argument("--repository", type=Path, default=Path("model-repo"), help="int8 artifacts folder")
    p.add_argument("--host", default="[::]", help="address to listen on (default: all interfaces)")
    p.add_argument("--port", type=int, default=50051, help="TCP port (0 picks a free one; default: 50051)")
    p.add_argument("--unix-socket", type=Path, help="also listen on this Unix domain socket (same-host clients)")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch intra-op threads for inference (default: all cores)",
    )
    p.add_argument("--max-streams", type=int, default=16, help="concurrent streams (default: 16)")
    p.add_argument(
        "--max-frame-bytes",
        type=int,
        default=8 << 20,
        help="largest frame accepted, JPEG or raw (default: 8 MiB); larger ones get RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-pixels",
        type=_at_least_one,
        default=DEFAULT_MAX_PIXELS,
        help=f"most pixels a frame may declare, read from its header before decoding (default: {DEFAULT_MAX_PIXELS}"
        ", 4096x3072: a 4K camera or a 12 MP sensor); more is a per-frame INVALID_ARGUMENT",
    )
    p.add_argument(
        "--max-side",
        type=_at_least_one,
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
        type=int,
        default=256 << 20,
        help="largest shared-memory region a same-host stream may map (default: 256 MiB; 0: refuse shared memory)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="most frames batched across streams (default: 8)")
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
        choices=["auto", "worker", "stream"],
        help="where frames are decoded: 'worker' = the model's inference thread, serialized with it "
        "(CPU default: no fight for cores); 'stream' = each stream's reader, overlapping inference "
        "(CUDA default; on a CPU with spare cores pair it with --threads below the core count)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
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
        type=int,
        default=1,
        help="daemon processes sharing --port (SO_REUSEPORT; each loads the models; the kernel spreads "
        "connections by a hash, so a few streams often land unevenly): past one process's Python ceiling "
        "on a GPU box with spare cores and many streams (default: 1)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers for its processes
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: off)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _at_least_one(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


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
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {value!r}")
    return sizes


def _model_args(values: list[str], default_precision: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, _, precision = value.partition(":")
        out.append((name, precision or default_precision))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
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
    # The inter-op pool stays at torch's default: capping it at 1 measured int8
    # SqueezeNet 5-8% slower (the TorchScript executor uses it).

    addresses = [f"{args.host}:{args.port}"]
    if args.unix_socket:
        addresses.append(f"unix:{args.unix_socket}")
    started = time.perf_counter()
    worker = args.worker_index is not None

    def listen() -> Daemon:
        d = Daemon(
            addresses,
            max_streams=args.max_streams,
            max_frame_bytes=args.max_frame_bytes,
            max_shm_bytes=args.max_shm_bytes,
            max_pixels=args.max_pixels,
            max_side=args.max_side,
            config_timeout=args.config_timeout,
            idle_timeout=args.idle_timeout,
            reuse_port=worker,
        ).start()
        print(f"edgeserver: listening on {', '.join(d.listening)}{'' if worker else ' (loading models)'}", flush=True)
        return d

    # A daemon listens at once and answers NOT_SERVING while it loads. A worker of
    # --workers listens once loaded: the kernel would hand it connections meanwhile.
    daemon = None if worker else listen()

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)

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
                f"batch sizes {list(model.scheduler.batch_sizes)}, preprocessing on the {model.preprocess_on}"
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
