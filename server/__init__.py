"""The edgeinfer daemon: model registry, loading, decoding, batching, gRPC servicers.

Needs the ``[edge]`` extra (ONNX Runtime, for ONNX artifacts: no torch) or ``[server]`` (torch and
torchvision, for everything else). Start it with ``edgeserver`` or, in Python::

    from edgeinfer.server import Daemon, load_model, WeightsSource
    daemon = Daemon(["localhost:50051"]).start()  # loopback; see Daemon for TLS and tokens
    daemon.add_model(load_model("squeezenet", weights=WeightsSource("random", seed=0)))
    daemon.mark_ready()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeinfer.server.app import Daemon
    from edgeinfer.server.loading import ModelTable, ServedModel, load_model
    from edgeinfer.server.registry import get_spec, list_models
    from edgeinfer.server.weights import WeightsSource

__all__ = ["Daemon", "ModelTable", "ServedModel", "WeightsSource", "get_spec", "list_models", "load_model"]

# Imported on first use: `edgeserver --help` and the --workers supervisor never load torch.
_HOME = {
    "Daemon": "app",
    "ModelTable": "loading",
    "ServedModel": "loading",
    "load_model": "loading",
    "get_spec": "registry",
    "list_models": "registry",
    "WeightsSource": "weights",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
