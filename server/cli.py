"""`edgeserver`: the daemon's command line.

    edgeserver --model squeezenet --weights random --seed 0
    edgeserver --model squeezenet --precision int8 --repository model-repo/
    edgeserver --model resnet50 --device cuda            # fp16, channels_last
    edgeserver --model squeezenet --host 0.0.0.0 --tls-cert server.pem --tls-key server.key --token-file tokens

Heavy imports (torch) happen inside main(), after the arguments are parsed, so
``--help`` is instant.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from edgeinfer.server.cli_args import (
    Exposure,
    build_parser,
    exposure,
    listen_error,
    model_args,
)

# Plain constants, no torch: --help stays instant.
from edgeinfer.server.security import (
    LOOPBACK,
    SecurityConfigError,
    tcp_address,
)
from edgeinfer.server.startup_checks import check_startup

if TYPE_CHECKING:
    from edgeinfer.server.loading import ServedModel

__all__ = ["Exposure", "build_parser", "exposure", "main"]

log = logging.getLogger("edgeinfer.server")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    worker = args.worker_index is not None
    # Before the TLS files are read: a certificate about to expire is a warning in the daemon's log format.
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:  # who may connect first: it needs no model code
        security = exposure(args)
    except SecurityConfigError as exc:
        print(f"edgeserver: error: {exc}", file=sys.stderr)
        return 2
    check_startup(args, parser)
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
    # Before torch and gRPC start threads: a daemon's memory comes back after its streams end (server/memory.py).
    from edgeinfer.server.memory import cap_malloc_arenas

    if args.malloc_arenas:
        cap_malloc_arenas(args.malloc_arenas)

    from edgeinfer.server.app import Daemon
    from edgeinfer.server.errors import EdgeInferError
    from edgeinfer.server.limits import FrameLimits
    from edgeinfer.server.loading import load_model
    from edgeinfer.server.runtimes.choice import choose_runtime

    started = time.perf_counter()
    models = model_args(args.model, args.precision)
    try:  # each model's runtime, chosen before listening: a missing one is one line and exit 2
        runtimes = [choose_runtime(n, p, args.device, args.repository, args.runtime) for n, p in models]
    except EdgeInferError as exc:
        print(f"edgeserver: error: {exc.details}", file=sys.stderr)
        return 2
    weights = None
    if "torch" in runtimes:  # torch only for a model that runs on it: a daemon of ONNX models never imports it
        import torch

        from edgeinfer.server.weights import WeightsSource

        torch.set_num_threads(max(1, args.threads))
        # The inter-op pool stays at torch's default: the TorchScript executor of int8
        # artifacts uses it, and capping it at 1 made them slower (bench/results/README.md).
        weights = WeightsSource.parse(args.weights, seed=args.seed)

    def load(name: str, precision: str, runtime: str) -> ServedModel:
        return load_model(
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
            runtime=runtime,
            threads=args.threads,
        )

    def said(model: ServedModel) -> None:
        print(
            f"edgeserver: loaded {model.name} {model.precision} on {model.device} "
            f"(weights {model.weights}, input {model.input_size}x{model.input_size}, "
            f"batch sizes {list(model.scheduler.batch_sizes)}, preprocessing on the {model.preprocess_on} thread"
            f"{', CUDA graphs' if args.cuda_graphs else ''}), served by {model.runtime} {model.runtime_version}",
            flush=True,
        )

    # ONNX models load before listening (a session takes well under a second): an artifact whose
    # SHA-256 does not match, or that onnxruntime cannot load, is one line and exit 2 before "listening".
    loaded = []
    try:
        for (name, precision), runtime in zip(models, runtimes, strict=True):
            if runtime == "onnxruntime":
                loaded.append(load(name, precision, runtime))
                said(loaded[-1])
    except EdgeInferError as exc:
        print(f"edgeserver: error: {exc.details}", file=sys.stderr)
        for model in loaded:
            model.stop()
        return 2

    def listen() -> Daemon:
        try:
            d = Daemon(
                security.addresses,
                max_streams=args.max_streams,
                max_connections=args.max_connections,
                max_connections_per_peer=args.max_connections_per_peer,
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
            print(f"edgeserver: error: {listen_error(exc, security.addresses)}", file=sys.stderr)
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

    if daemon is not None:
        for model in loaded:
            daemon.add_model(model)
    try:
        for (name, precision), runtime in zip(models, runtimes, strict=True):
            if runtime == "onnxruntime" or stop.is_set():
                continue
            model = load(name, precision, runtime)
            loaded.append(model)
            if daemon is not None:
                daemon.add_model(model)
            said(model)
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
