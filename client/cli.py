"""`edgeclient`: stream a camera, a video or images to the daemon and print top-k.

    edgeclient --model squeezenet --camera 0
    edgeclient --model squeezenet --video clip.mp4 --drop-policy all --json > answers.jsonl
    edgeclient --model resnet50 --images photos/ --top-k 3 --save annotated.mp4
    edgeclient --server robot1:50051 --tls-ca ca.pem --token-file token --camera 0

Per frame it prints one line (or one JSON object with --json); at the end a
summary (frames sent, answered, dropped, errors, fps, latency p50/p95) to
stdout, or to stderr with --json so stdout stays one JSON line per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from edgeinfer.client.api import DROP_POLICIES, EdgeClient
from edgeinfer.client.errors import EdgeInferError
from edgeinfer.client.frames import ENCODINGS, Frame
from edgeinfer.client.results import FrameResult
from edgeinfer.client.security import TOKEN_ENV, read_token_file
from edgeinfer.media.sources import SourceError, capture_frames, image_frames

__all__ = ["Summary", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeclient", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="INDEX", help="camera index (OpenCV VideoCapture)")
    src.add_argument("--video", type=Path, metavar="PATH", help="video file, played at its own frame rate")
    src.add_argument("--images", type=Path, metavar="PATH", help="an image file or a folder of images")
    p.add_argument("--model", default="squeezenet", help="model name (default: squeezenet)")
    p.add_argument("--precision", default="", help="fp32, fp16 or int8 when the daemon serves several")
    p.add_argument(
        "--server",
        default="localhost:50051",
        help="host:port or unix:/path (default: localhost:50051); several daemons, streams spread round-robin: "
        "dns:///name:port (every address of the name) or ipv4:host:port,host:port",
    )
    p.add_argument("--top-k", type=int, default=5, help="classes per answer (default: 5)")
    p.add_argument(
        "--drop-policy",
        choices=sorted(DROP_POLICIES),
        default="latest",
        help="latest: drop stale frames while the model is busy (default); all: infer every frame",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="send at most this many frames/s (default: a video's own rate, a camera's, images unpaced); "
        "0: as fast as the stream allows",
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="jpeg",
        help="wire format: jpeg (default), raw pixels, or shm (raw pixels in shared memory; a daemon on this host)",
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default: 90)")
    p.add_argument("--json", action="store_true", help="one JSON object per frame on stdout")
    p.add_argument("--save", type=Path, metavar="OUT.mp4", help="write the frames with top-1 and latency drawn")
    p.add_argument("--timeout", type=float, default=None, help="deadline for the whole stream, seconds")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the daemon to be ready")
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
            f"{fps:.1f} predictions/s over {elapsed:.1f} s, {latency}"
        )


def _source(args: argparse.Namespace) -> Iterator[np.ndarray]:
    if args.camera is not None:
        return capture_frames(args.camera, fps=args.fps)
    if args.video is not None:
        return capture_frames(args.video, fps=args.fps)
    return image_frames(args.images, fps=args.fps)


def _line(result: FrameResult) -> str:
    head = f"#{result.sequence:<5d}"
    if result.prediction:
        p = result.prediction
        classes = " | ".join(f"{c.label} {c.probability:.3f}" for c in p.classes)
        latency = f"{result.latency_ms:7.1f} ms" if result.latency_ms is not None else "       ?"
        return f"{head} {latency}  {classes}"
    if result.dropped is not None:
        return f"{head} dropped  ({result.dropped})"
    return f"{head} error    {result.error_code.name if result.error_code else '?'}: {result.error}"


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    summary = Summary()
    kept: dict[int, np.ndarray] = {}
    writer = None
    if args.save:
        from edgeinfer.client.overlay import AnnotatedVideoWriter

        writer = AnnotatedVideoWriter(args.save, fps=args.fps or 30.0)

    def frames() -> Iterator[Frame]:
        for i, image in enumerate(_source(args)):
            if args.max_frames is not None and i >= args.max_frames:
                return
            if writer is not None:
                kept[i] = image
            summary.sent += 1
            yield Frame(image, sequence=i)

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
        return 2
    try:
        with client:
            client.wait_ready(args.model, precision=args.precision, timeout=args.wait)
            summary.started = time.perf_counter()
            results = client.stream(
                frames(),
                args.model,
                top_k=args.top_k,
                precision=args.precision,
                drop_policy=args.drop_policy,
                encoding=args.encoding,
                quality=args.quality,
                timeout=args.timeout,
            )
            for result in results:
                summary.add(result)
                print(json.dumps(result.to_json()) if args.json else _line(result), file=out, flush=True)
                if writer is not None:
                    writer.write(kept.pop(result.sequence), result)
    except EdgeInferError as exc:
        print(f"edgeclient: {exc.code.name}: {exc.details}", file=err)
        return 1
    except SourceError as exc:
        print(f"edgeclient: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        summary.ended = time.perf_counter()
        if writer is not None:
            writer.close()
        print(summary.render(), file=err if args.json else out, flush=True)
        if writer is not None:
            print(f"edgeclient: wrote {writer.frames} annotated frames to {args.save}", file=err)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.quality <= 100:
        build_parser().error("--quality must be 1..100")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
