"""What ``edgeserver`` checks before it imports torch, listens or loads a model.

Every mistake a person can make on the command line (a model name, a precision the device cannot
serve, a port that is taken, a folder that does not exist, an artifact's sidecar that cannot be read)
is one line and exit 2 at once, instead of a traceback after seconds of imports (issues 25 and 26).
Nothing here imports torch, torchvision or the daemon's gRPC services.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import re
import socket
import stat
from pathlib import Path
from typing import Any

from edgeinfer.server.model_names import UnknownModel, split_model_arg
from edgeinfer.server.options import Precision, WeightsKind
from edgeinfer.server.security import LOOPBACK

__all__ = [
    "SIDECAR",
    "SIDECAR_FLOWS",
    "SidecarError",
    "bind_problem",
    "check_startup",
    "read_checked_sidecar",
    "unix_socket_problem",
]

SIDECAR = "edgeinfer.json"
SIDECAR_FLOWS = ("fx", "pt2e")  # the flows whose model files server/artifacts.py loads (MODEL_FILES)
FORMAT_VERSION = 1
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# key -> the type the daemon reads it as; a sidecar edgequant wrote has all of them ('file' and 'sha256'
# too, which server/artifacts.py's read_model_file checks with the file they name)
_SIDECAR_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "flow": str,
    "engine": str,
    "torch": str,
    "weights": str,
    "preprocessing": dict,
}
_PREPROCESSING_KEYS: dict[str, type | tuple[type, ...]] = {
    "resize_size": int,
    "crop_size": int,
    "mean": list,
    "std": list,
}


class SidecarError(ValueError):
    """An artifact's sidecar that cannot be read or lacks what the daemon needs; the message is one line."""


def check_startup(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every argument mistake argparse cannot see alone, as ``parser.error`` (one line, exit 2)."""
    if not _DEVICE.fullmatch(args.device.strip().lower()):
        parser.error(f"argument --device: {args.device!r} is not a device this daemon serves on; use cpu or cuda[:N]")
    cuda = args.device.strip().lower().startswith("cuda")
    needs_weights = False
    for value in args.model:
        try:
            name, precision = split_model_arg(value, args.precision)
        except UnknownModel as exc:
            parser.error(f"argument --model: {exc}")
        if precision == Precision.FP16 and not cuda:
            parser.error(f"argument --model: {name} in fp16: fp16 is served on CUDA only; on the CPU use fp32 or int8")
        if precision == Precision.INT8 and cuda:
            parser.error(f"argument --model: {name} in int8: int8 runs on the CPU only; on CUDA serve fp16")
        needs_weights |= precision != Precision.INT8
        folder = _artifact_dir(args.repository, name)
        onnx = Path(args.repository) / name / "onnx-int8" / SIDECAR  # server/artifacts.py's onnx_artifact_dir
        if precision == Precision.INT8 and ((folder / SIDECAR).exists() or not onnx.exists()):
            try:
                read_checked_sidecar(folder, repository=args.repository, model=name)
            except SidecarError as exc:
                parser.error(str(exc))
    named = args.weights not in (WeightsKind.IMAGENET, WeightsKind.RANDOM)
    if needs_weights and named and not Path(args.weights).expanduser().is_file():
        parser.error(f"argument --weights: weights file {args.weights} does not exist (or use imagenet or random)")
    if args.cuda_graphs and not cuda:
        parser.error(f"argument --cuda-graphs: it replays GPU work: it needs --device cuda, not {args.device}")
    if args.batch_sizes and max(args.batch_sizes) > args.max_batch:
        parser.error(f"argument --batch-sizes: {max(args.batch_sizes)} is over --max-batch {args.max_batch}")
    given = args.host or LOOPBACK
    host = _host(given, "--host", parser)
    if args.unix_socket is not None:
        problem = unix_socket_problem(args.unix_socket)
        if problem:
            parser.error(f"argument --unix-socket: {problem}")
    _check_side_ports(args, parser)
    if args.worker_index is None:  # --workers' processes share the port on purpose
        problem = bind_problem(host, args.port)
        if problem:
            parser.error(f"cannot listen on {given}:{args.port}: {problem}")


def _host(given: str, flag: str, parser: argparse.ArgumentParser) -> str:
    host = given.strip("[]")
    if not host or any(c.isspace() for c in host):
        parser.error(f"argument {flag}: {given!r} is not a host name or address")
    if given not in ("[::]", "0.0.0.0", "::") and not given.startswith("["):
        try:  # a name that does not resolve would only fail at bind, as "Failed to bind"
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError) as exc:
            parser.error(f"argument {flag}: cannot resolve {given!r} ({exc})")
    return host


def _check_side_ports(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--metrics-port and --health-port: a port of their own, free now."""
    taken = {args.port: "--port"} if args.port else {}
    sides = [("--metrics-port", args.metrics_port, args.metrics_host), ("--health-port", args.health_port, None)]
    for flag, port, host_arg in sides:
        if not port:
            continue
        if port in taken:
            parser.error(f"argument {flag}: {port} is also {taken[port]}; give {flag} a port of its own")
        taken[port] = flag
        given = host_arg or args.host or LOOPBACK
        host = _host(given, "--metrics-host" if host_arg else "--host", parser)
        if args.worker_index is None:
            problem = bind_problem(host, port, flag=flag)
            if problem:
                parser.error(f"argument {flag}: cannot listen on {given}:{port}: {problem}")


def bind_problem(host: str, port: int, *, flag: str = "--port") -> str | None:
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
                    another = f"another edgeserver? pick another {flag}, or {flag} 0 for a free one"
                    return f"port {port} is in use ({another})"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host} is not an address of this host (an address of this machine, or [::] for all)"
                return exc.strerror or str(exc)
    return None


def unix_socket_problem(path: Path) -> str | None:
    """Why a Unix socket cannot be made at ``path`` now, or None (a stale socket file is replaced)."""
    folder = path.parent
    if not folder.exists():
        return f"folder {folder} does not exist (create it, or name a socket in an existing folder)"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {path.name} in {folder}: permission denied"
    if len(os.fsencode(path)) > 107:  # sun_path holds 108 bytes with its NUL
        return f"{path} is {len(os.fsencode(path))} bytes long; a Unix socket path holds at most 107"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; name a new path"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return None  # nobody listens: a stale socket file, which grpc replaces
    return f"{path} is in use: another process listens on it (another edgeserver?)"


def _artifact_dir(repository: Path, model: str) -> Path:
    # server/artifacts.py's artifact_dir and default_engine, without torch
    arm = platform.machine().lower() in ("aarch64", "arm64", "armv7l")
    return Path(repository) / model / f"int8-{'qnnpack' if arm else 'x86'}"


def read_checked_sidecar(folder: Path, *, repository: Path | None = None, model: str = "") -> dict[str, Any]:
    """An int8 artifact's sidecar, once it is known to hold what the daemon reads; SidecarError otherwise."""
    path = folder / SIDECAR
    remake = f"re-make it with: edgequant --model {model or folder.parent.name} --calib PATH --out {repository or '.'}"
    if not path.is_file():
        make = remake.replace("re-make it", "make one")
        raise SidecarError(f"no int8 artifact for {model or folder.parent.name}: looked for {path}; {make}")
    try:
        meta = json.loads(path.read_bytes())
    except OSError as exc:
        raise SidecarError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SidecarError(f"{path} is not JSON{where}; {remake}") from None
    if not isinstance(meta, dict):
        raise SidecarError(f"{path} holds JSON {type(meta).__name__}, not the sidecar's object; {remake}")
    problems = _missing(meta, _SIDECAR_KEYS, "")
    if not problems and isinstance(meta.get("preprocessing"), dict):
        problems = _missing(meta["preprocessing"], _PREPROCESSING_KEYS, "preprocessing.")
    if problems:
        raise SidecarError(f"{path} lacks {', '.join(problems)}; {remake}")
    if meta["format_version"] != FORMAT_VERSION:
        raise SidecarError(
            f"{path} has artifact format {meta['format_version']}, this daemon reads {FORMAT_VERSION}; {remake}"
        )
    if meta["flow"] not in SIDECAR_FLOWS:
        raise SidecarError(
            f"{path} names flow {meta['flow']!r}, which this daemon does not load ({'/'.join(SIDECAR_FLOWS)}); {remake}"
        )
    return meta


def _missing(meta: dict[str, Any], keys: dict[str, type | tuple[type, ...]], prefix: str) -> list[str]:
    out = []
    for key, kind in keys.items():
        if key not in meta:
            out.append(f"'{prefix}{key}'")
        elif not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            out.append(f"'{prefix}{key}' as {getattr(kind, '__name__', kind)}")
    return out
