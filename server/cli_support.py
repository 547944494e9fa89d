"""The ``edgeserver`` and ``edgequant`` entry points: in an install without their extra, one line that names it.

A client-only install (``pip install edgeinfer`` or ``edgeinfer[camera]``) still gets every console
script of the distribution. Run there, ``edgeserver`` would die in a ``ModuleNotFoundError``
traceback for ``grpc_interceptor`` or ``torch`` (issue 25); instead it says which extra to install,
before importing anything of the daemon. ``importlib.util.find_spec`` looks a package up without
importing it, so the check costs milliseconds.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

__all__ = [
    "DAEMON_MODULES",
    "QUANT_MODULES",
    "SERVER_MODULES",
    "edgeserver",
    "missing_extra_line",
    "missing_modules",
    "require_extra",
]

# import name -> the distribution pip knows it by: what every daemon needs, whatever runs its models
# (pyproject.toml's [edge] and [server] extras both have them). Torch is not among them: a board's
# daemon serves ONNX models without it, and a model that needs torch says so when it is chosen
# (server/runtimes/choice.py).
DAEMON_MODULES = {
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "grpc_interceptor": "grpc-interceptor",
    "prometheus_client": "prometheus-client",
    "simplejpeg": "simplejpeg",
    "cryptography": "cryptography",
}
# the workstation's daemon: [server]
SERVER_MODULES = {"torch": "torch", "torchvision": "torchvision", **DAEMON_MODULES}
# [quant] = [server] + [camera] + torchao: edgequant checks these (quant/cli.py)
QUANT_MODULES = {**SERVER_MODULES, "cv2": "opencv-python-headless", "torchao": "torchao", "tqdm": "tqdm"}


def missing_modules(modules: dict[str, str]) -> list[str]:
    """The distributions of ``modules`` that this environment cannot import."""
    missing = []
    for name, dist in modules.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that fails, or a broken entry in sys.modules
            found = False
        if not found:
            missing.append(dist)
    return missing


def missing_extra_line(prog: str, extra: str, missing: Sequence[str]) -> str:
    return (
        f"{prog}: error: this install of edgeinfer lacks {', '.join(missing)}, which {prog} needs: "
        f"install the [{extra}] extra (pip install 'edgeinfer[{extra}]'); the client alone needs none of them"
    )


def require_extra(prog: str, extra: str, modules: dict[str, str]) -> None:
    """One line and exit 2 when ``modules`` are not all installed; otherwise nothing."""
    missing = missing_modules(modules)
    if missing:
        print(missing_extra_line(prog, extra, missing), file=sys.stderr)
        sys.exit(2)


def edgeserver() -> int:
    missing = missing_modules(DAEMON_MODULES)
    if missing:
        print(
            missing_extra_line("edgeserver", "edge", missing).replace(
                "(pip install 'edgeinfer[edge]')",
                "for a board (ONNX models; pip install 'edgeinfer[edge]') or [server] for torch models "
                "(pip install 'edgeinfer[server]')",
            ),
            file=sys.stderr,
        )
        sys.exit(2)
    from edgeinfer.server.cli import main

    return main()
