"""`edgeclient`: stream a camera, a video or images to the daemon and print top-k.

The arguments, their defaults and the exit statuses are in :mod:`edgeinfer.client.cli_args`
(``edgeclient --help``); what is printed, in :mod:`edgeinfer.client.cli_output`.
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
from collections.abc import Iterator
from typing import TextIO

import grpc
import numpy as np

from edgeinfer.client.api import EdgeClient
from edgeinfer.client.cli_args import (
    EXIT_FRAMES_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STREAM_FAILED,
    EXIT_USAGE,
    build_parser,
    drop_policy,
)
from edgeinfer.client.cli_output import Summary, json_record, line, warn_random_weights
from edgeinfer.client.errors import EdgeInferError, SourceError
from edgeinfer.client.frames import Frame
from edgeinfer.client.security import read_token_file
from edgeinfer.client.stream_source import describe, file_name, open_source, pixels

__all__ = ["Summary", "build_parser", "main", "run"]


def _quiet_libraries(level: str) -> None:
    """OpenCV's, FFmpeg's and gRPC's own log lines only with --log-level debug: a user reads ours, once."""
    if level == "debug":  # OpenCV's default level, said, so that the sources do not quiet it either
        os.environ.setdefault("OPENCV_LOG_LEVEL", "WARNING")
        return
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # read when cv2 is imported: covers videoio's open warnings
    # FFmpeg's own lines ("[mjpeg @ 0x...] No JPEG data found in image" for --video notes.jpg): -8 is
    # AV_LOG_QUIET; OpenCV sets it when it opens its first capture.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # a cv2 imported before this ran


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up now, not at import: redirect_stdout and pytest's capture work
    err = err or sys.stderr
    summary = Summary()
    kept: dict[int, np.ndarray] = {}
    names: dict[int, str | None] = {}
    writer = None
    chatty = args.log_level in ("debug", "info")

    def say(message: str) -> None:
        if chatty:
            print(f"edgeclient: {message}", file=err, flush=True)

    def gap(message: str) -> None:
        summary.gaps += 1
        say(message)

    try:
        # The source opens first: a missing camera is the first thing a user hears, daemon or not.
        source = open_source(args, gap)
        first = next(source, None)
    except SourceError as exc:
        print(f"edgeclient: {exc.details}", file=err)
        return EXIT_USAGE
    if first is None:
        print(f"edgeclient: the {describe(args)} delivered no frames (is it a file OpenCV can decode?)", file=err)
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
                kept[i] = pixels(item)
            names[i] = file_name(item)
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
            warn_random_weights(info, err)
            summary.started = time.perf_counter()
            results = client.stream(
                frames(),
                args.model,
                top_k=args.top_k,
                precision=args.precision,
                drop_policy=drop_policy(args),
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
                    name = names.pop(result.sequence, None)
                    text = json.dumps(json_record(result, name)) if args.json else line(result, name)
                    print(text, file=out, flush=True)
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
        print(f"edgeclient: {exc.reason}", file=err)
        # A --model or --precision the daemon does not serve is the command line's mistake.
        status = EXIT_USAGE if exc.code == grpc.StatusCode.NOT_FOUND and not summary.sent else EXIT_STREAM_FAILED
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED  # --help: 0 means every frame was answered; a Ctrl-C'd run did not get there
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.log_level)
    try:
        return run(args)
    except KeyboardInterrupt:  # before the stream started (opening the source, reading the token)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
