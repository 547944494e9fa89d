"""The edgeinfer daemon: model registry, loading, decoding, batching, gRPC servicers.

Needs the ``[server]`` extra (torch, torchvision). Start it with ``edgeserver``
or, in Python::

    from edgeinfer.server import Daemon, load_model, WeightsSource
    daemon = Daemon(["[::]:50051"]).start()
    daemon.add_model(load_model("squeezenet", weights=WeightsSource("random", seed=0)))
    daemon.mark_ready()
"""

from edgeinfer.server.app import Daemon
from edgeinfer.server.loading import ModelTable, ServedModel, load_model
from edgeinfer.server.registry import get_spec, list_models
from edgeinfer.server.weights import WeightsSource

__all__ = ["Daemon", "ModelTable", "ServedModel", "WeightsSource", "get_spec", "list_models", "load_model"]
