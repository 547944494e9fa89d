"""`edgeclient`: stream a camera, a video or images to the daemon and print top-k.

    edgeclient --model squeezenet --camera 0
    edgeclient --model squeezenet --video clip.mp4 --drop-policy all --json > answers.jsonl
    edgeclient --model resnet50 --images photos/ --top-k 3 --save annotated.mp4
    edgeclient --server robot1:50051 --tls-ca ca.pem --token-file token --camera 0

Per frame it prints one line (or one JSON object with --json); at the end a
summary (frames sent, answered, dropped, errors, reconnects, source gaps, fps,
latency p50/p95) to stdout, or to stderr with --json so stdout stays one JSON
line per frame. When the daemon restarts, the stream reconnects and goes on.

Exit status: 0 every frame answered (predicted or dropped); 1 the daemon refused
the stream or stayed unreachable; 2 a usage mistake (a model the daemon does not
serve among them) or a source that cannot be opened; 3 some frames failed
(per-frame errors: a damaged file, a frame refused).
"""

from __future__ import annotations

import itertools
import os
import sys


def _quiet_grpc(argv: list[str]) -> None:
    """gRPC's own log lines (a GOAWAY when the daemon restarts) only with --log-level debug.

    gRPC reads GRPC_VERBOSITY once, when it is imported: so here, before the imports below.
    """
    debug = "--log-level=debug" in argv or any(a == "--log-level" and b == "debug" for a, b in itertools.pairwise(argv))
    if not debug:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


_quiet_grpc(sys.argv[1:])

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

import grpc
import numpy as np

from edgeinfer.client.api import DROP_POLICIES, RESIZE_MODES, EdgeClient
from edgeinfer.client.errors import EdgeInferError, SourceError
from edgeinfer.client.frames import ENCODINGS, Frame
from edgeinfer.client.results import FrameResult, ModelInfo, percent
from edgeinfer.client.security import TOKEN_ENV, read_token_file
from edgeinfer.client.sources import ImageFile, capture_frames, image_files
from edgeinfer.media.sources import SourceError as MediaSourceError

__all__ = ["Summary", "build_parser", "main"]

EXIT_OK, EXIT_STREAM_FAILED, EXIT_USAGE, EXIT_FRAMES_FAILED = 0, 1, 2, 3
REAL_WEIGHTS_HINT = (
    "the labels are real ImageNet names but mean nothing; for real predictions start edgeserver with "
    "--weights imagenet (or a state_dict path), or run the demo as WEIGHTS=imagenet scripts/demo.sh"
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {'whole ' if kind is int else ''}number, got {value!r}"
            ) from None
        if (
            x != x
            or x in (float("inf"), float("-inf"))
            or x < low
            or (above and x == low)
            or (high is not None and x > high)
        ):
            bound = f"{low:g}..{high:g}" if high is not None else f"{'above' if above else 'at least'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return x

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgeclient", description=__doc__.splitlines()[0], epilog=_exit_statuses())
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=_number(int, 0), metavar="INDEX", help="camera index (OpenCV VideoCapture)")
    src.add_argument(
        "--video", metavar="PATH|URL", help="video file (played at its own frame rate) or stream URL (rtsp://, http://)"
    )
    src.add_argument("--images", type=Path, metavar="PATH", help="an image file or a folder of images")
    p.add_argument("--model", default="squeezenet", help="model name (default: squeezenet)")
    p.add_argument("--precision", default="", help="fp32, fp16 or int8 when the daemon serves several")
    p.add_argument(
        "--server",
        default="localhost:50051",
        help="host:port or unix:/path (default: localhost:50051); several daemons, streams spread round-robin: "
        "dns:///name:port (every address of the name) or ipv4:host:port,host:port",
    )
    p.add_argument("--top-k", type=_number(int, 1, 1000), default=5, help="classes per answer, 1-1000 (default: 5)")
    p.add_argument(
        "--drop-policy",
        choices=sorted(DROP_POLICIES),
        default="latest",
        help="latest: drop stale frames while the model is busy (default); all: infer every frame",
    )
    p.add_argument(
        "--fps",
        type=_number(float, 0),
        default=None,
        help="send at most this many frames/s (default: a video's own rate, a camera's, images unpaced); "
        "0: as fast as the stream allows",
    )
    p.add_argument("--max-frames", type=_number(int, 1), default=None, help="stop after this many frames")
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="jpeg",
        help="wire format: jpeg (default), raw pixels, or shm (raw pixels in shared memory; a daemon on this host)",
    )
    p.add_argument("--quality", type=_number(int, 1, 100), default=90, help="JPEG quality 1-100 (default: 90)")
    p.add_argument(
        "--client-resize",
        choices=RESIZE_MODES,
        default="auto",
        help="auto (default): send only the part of a frame the daemon's center crop keeps, shrunk to its "
        "resize size, when the frame is larger (far fewer bytes, same model input); off: frames as they are",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per frame on stdout")
    p.add_argument("--save", type=Path, metavar="OUT.mp4", help="write the frames with top-1 and latency drawn")
    p.add_argument(
        "--timeout", type=_number(float, 0, above=True), default=None, help="deadline for the whole stream, seconds"
    )
    p.add_argument(
        "--wait", type=_number(float, 0), default=30.0, help="seconds to wait for the daemon to be ready (default: 30)"
    )
    p.add_argument(
        "--no-reconnect",
        action="store_true",
        help="fail at once when the connection to the daemon is lost (default: reconnect with backoff and go on)",
    )
    p.add_argument(
        "--max-outage",
        type=_number(float, 0),
        default=60.0,
        help="seconds to keep reconnecting to a lost daemon before giving up (default: 60; 0: forever)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="info (default): status lines (waiting, reconnecting) on stderr; warning/error: fewer; "
        "debug: also OpenCV's and gRPC's own messages",
    )
    tls = p.add_argument_group("security (a daemon with TLS or tokens)")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="connect with TLS, trusting this CA certificate")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's private key")
    tls.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"bearer token: the file's first line that is not a '#' comment (default: ${TOKEN_ENV} if set)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="send the token in plaintext to a daemon on another host (one started with --insecure)",
    )
    return p


@dataclass
class Summary:
    sent: int = 0
    predicted: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    gaps: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    def add(self, result: FrameResult) -> None:
        if result.prediction:
            self.predicted += 1
            if result.latency_ms is not None:
                self.latencies_ms.append(result.latency_ms)
        elif result.dropped is not None:
            self.dropped += 1
        else:
            self.errors += 1

    @property
    def answered(self) -> int:
        return self.predicted + self.dropped + self.errors

    def render(self) -> str:
        elapsed = (self.ended or time.perf_counter()) - self.started
        fps = self.predicted / elapsed if elapsed > 0 else 0.0
        if self.latencies_ms:
            p50, p95 = np.percentile(self.latencies_ms, [50, 95])
            latency = f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        else:
            latency = "latency n/a"
        return (
            f"summary: sent {self.sent}, answered {self.answered} "
            f"(predicted {self.predicted}, dropped {self.dropped}, errors {self.errors}), "
            f"reconnects {self.reconnects}, source gaps {self.gaps}, "
            f"{fps:.1f} predictions/s over {elapsed:.1f} s, {latency}"
        )


def _line(result: FrameResult) -> str:
    head = f"#{result.sequence:<5d}"
    if result.prediction:
        p = result.prediction
        classes = " | ".join(f"{c.label} {percent(c.probability)}" for c in p.classes)
        latency = f"{result.latency_ms:7.1f} ms" if result.latency_ms is not None else "       ?"
        return f"{head} {latency}  {classes}"
    if result.dropped is not None:
        return f"{head} dropped  ({result.dropped})"
    return f"{head} error    {result.error_code.name if result.error_code else '?'}: {result.error}"


def _exit_statuses() -> str:
    """The module docstring's exit status paragraph, for --help."""
    text = __doc__.split("Exit status:", 1)[1]
    return "exit status: " + " ".join(text.split())


def _quiet_libraries(level: str) -> None:
    """OpenCV's and gRPC's own log lines only with --log-level debug: a user reads ours, once."""
    if level == "debug":  # OpenCV's default level, said, so that the sources do not quiet it either
        os.environ.setdefault("OPENCV_LOG_LEVEL", "WARNING")
        return
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # read when cv2 is imported: covers videoio's open warnings
    if "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # a cv2 imported before this ran


def _source(args: argparse.Namespace, summary: Summary, say: Callable[[str], None]) -> Iterator[np.ndarray | ImageFile]:
    def gap(message: str) -> None:
        summary.gaps += 1
        say(message)

    if args.camera is not None:
        return capture_frames(args.camera, fps=args.fps, on_gap=gap)
    if args.video is not None:
        return capture_frames(args.video, fps=args.fps, on_gap=gap)
    return image_files(args.images, fps=args.fps)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up now, not at import: redirect_stdout and pytest's capture work
    err = err or sys.stderr
    summary = Summary()
    kept: dict[int, np.ndarray] = {}
    writer = None
    chatty = args.log_level in ("debug", "info")

    def say(message: str) -> None:
        if chatty:
            print(f"edgeclient: {message}", file=err, flush=True)

    try:
        # The source opens first: a missing camera is the first thing a user hears, daemon or not.
        source = _source(args, summary, say)
        first = next(source, None)
    except SourceError as exc:
        print(f"edgeclient: {exc.details}", file=err)
        return EXIT_USAGE
    if first is None:
        print("edgeclient: the source delivered no frames", file=err)
        return EXIT_USAGE
    if args.save:
        from edgeinfer.client.overlay import AnnotatedVideoWriter

        writer = AnnotatedVideoWriter(args.save, fps=args.fps or 30.0)

    def frames() -> Iterator[Frame]:
        items = [first]
        i = 0
        while True:
            item = items.pop() if items else next(source, None)
            if item is None or (args.max_frames is not None and i >= args.max_frames):
                return
            if writer is not None:
                kept[i] = _pixels(item)
            summary.sent += 1
            yield Frame(item, sequence=i)  # type: ignore[arg-type]
            i += 1

    status = EXIT_OK
    try:
        token = read_token_file(args.token_file) if args.token_file is not None else None
        client = EdgeClient(
            args.server,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token=token,
            insecure=args.insecure,
        )
    except ValueError as exc:  # a file that cannot be read, a token that would go out in plaintext
        print(f"edgeclient: {exc}", file=err)
        if writer is not None:
            writer.close()
        return EXIT_USAGE
    try:
        with client:
            info = client.wait_ready(
                args.model,
                precision=args.precision,
                timeout=args.wait,
                on_wait=lambda e: say(f"waiting for {args.server} ... ({e.reason})"),
            )
            _warn_random_weights(info, err)
            summary.started = time.perf_counter()
            results = client.stream(
                frames(),
                args.model,
                top_k=args.top_k,
                precision=args.precision,
                drop_policy=args.drop_policy,
                encoding=args.encoding,
                quality=args.quality,
                resize=args.client_resize,
                reconnect=not args.no_reconnect,
                max_outage=args.max_outage or None,
                on_status=say,
                timeout=args.timeout,
            )
            try:
                for result in results:
                    summary.add(result)
                    print(json.dumps(result.to_json()) if args.json else _line(result), file=out, flush=True)
                    if writer is not None:
                        image = kept.pop(result.sequence, None)
                        if image is not None:
                            writer.write(image, result)
            finally:
                summary.reconnects = results.reconnects
    except SourceError as exc:
        print(f"edgeclient: {exc.details}", file=err)
        status = EXIT_USAGE
    except EdgeInferError as exc:
        print(f"edgeclient: {exc.code.name}: {exc.details}", file=err)
        # A --model or --precision the daemon does not serve is the command line's mistake.
        status = EXIT_USAGE if exc.code == grpc.StatusCode.NOT_FOUND and not summary.sent else EXIT_STREAM_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        summary.ended = time.perf_counter()
        if writer is not None:
            writer.close()
        if summary.sent:  # nothing sent: the error above says it all
            print(summary.render(), file=err if args.json else out, flush=True)
        if writer is not None and writer.frames:
            print(f"edgeclient: wrote {writer.frames} annotated frames to {args.save}", file=err)
    if status == EXIT_OK and summary.errors:
        return EXIT_FRAMES_FAILED
    return status


def _pixels(item: np.ndarray | ImageFile) -> np.ndarray:
    """The frame to draw on for --save (an image file is decoded for it; a bad one becomes black)."""
    if isinstance(item, np.ndarray):
        return item
    from edgeinfer.media.images import decode_image

    try:
        return decode_image(item.read(), name=str(item.path))
    except MediaSourceError:  # the frame's own error line says why
        return np.zeros((240, 320, 3), np.uint8)


def _warn_random_weights(info: ModelInfo, err: TextIO) -> None:
    if "random" in info.weights:
        print(f"edgeclient: note: {info.name} runs with random weights ({info.weights}): {REAL_WEIGHTS_HINT}", file=err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.log_level)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
