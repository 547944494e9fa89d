"""`edgeclient`: stream a camera, a video or images to the daemon and print top-k.

    edgeclient --model squeezenet --camera 0
    edgeclient --model squeezenet --video clip.mp4 --drop-policy all --json > answers.jsonl
    edgeclient --model resnet50 --images photos/ --top-k 3 --save annotated.mp4
    edgeclient --server robot1:50051 --tls-ca ca.pem --token-file token --camera 0

Per frame it prints one line (or one JSON object with --json); at the end a
summary (frames sent, answered, dropped, errors, reconnects, source gaps, fps,
latency p50/p95) to stdout, or to stderr with --json so stdout stays one JSON
line per frame. When the daemon restarts, the stream reconnects and goes on, for
up to --max-outage seconds and no longer than the source lasts.

Exit status: 0 every frame answered (predicted or dropped); 1 the daemon refused
the stream or stayed unreachable; 2 a usage mistake (a model the daemon does not
serve among them) or a source that cannot be opened; 3 some frames failed
(per-frame errors: a damaged file, a frame refused); 130 stopped with Ctrl-C
(after the summary).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from edgeinfer.client.api import DROP_POLICIES, RESIZE_MODES
from edgeinfer.client.frames import ENCODINGS
from edgeinfer.client.security import TOKEN_ENV
from edgeinfer.client.targets import DEFAULT_PORT, normalize_target

__all__ = [
    "EXIT_FRAMES_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STREAM_FAILED",
    "EXIT_USAGE",
    "build_parser",
    "drop_policy",
]

EXIT_OK, EXIT_STREAM_FAILED, EXIT_USAGE, EXIT_FRAMES_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


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


def _target(value: str) -> str:
    try:
        return normalize_target(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def drop_policy(args: argparse.Namespace) -> str:
    """--drop-policy, or its default for the source: a folder or a file read as fast as it goes is not a
    camera, so every frame is inferred; a camera, a paced video or a stream keeps only the latest."""
    if args.drop_policy is not None:
        return str(args.drop_policy)
    if args.images is not None or (args.video is not None and args.fps == 0):
        return "all"
    return "latest"


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
        type=_target,
        default=f"localhost:{DEFAULT_PORT}",
        help=f"host:port or unix:/path (default: localhost:{DEFAULT_PORT}; a host without a port gets "
        f"{DEFAULT_PORT}); several daemons, streams spread round-robin: "
        "dns:///name:port (every address of the name) or ipv4:host:port,host:port",
    )
    p.add_argument("--top-k", type=_number(int, 1, 1000), default=5, help="classes per answer, 1-1000 (default: 5)")
    p.add_argument(
        "--drop-policy",
        choices=sorted(DROP_POLICIES),
        default=None,
        help="latest: drop stale frames while the model is busy; all: infer every frame "
        "(default: all for --images and for --video with --fps 0, latest for a camera or a paced video)",
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
    p.add_argument(
        "--save",
        type=Path,
        metavar="OUT.mp4",
        help="write the frames with top-1 and latency drawn (each letterboxed to the first frame's size)",
    )
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
        help="seconds to keep reconnecting to a lost daemon before giving up, exit status 1 (default: 60; "
        "0: forever); a source that ends during the outage ends the wait too",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="info (default): status lines (waiting, reconnecting) on stderr; warning/error: fewer; "
        "debug: also OpenCV's, FFmpeg's and gRPC's own messages",
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


def _exit_statuses() -> str:
    """The module docstring's exit status paragraph, for --help."""
    text = (__doc__ or "").split("Exit status:", 1)[1]
    return "exit status: " + " ".join(text.split())
