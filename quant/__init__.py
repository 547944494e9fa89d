"""The quantization stage: torchvision classifiers to int8 artifacts the daemon serves
(it writes them; :mod:`edgeinfer.server.artifacts` reads them).

from edgeinfer.quant import quantize
from edgeinfer.server import WeightsSource
artifact = quantize("squeezenet", calib="clip.mp4", out=Path("model-repo"), weights=WeightsSource("imagenet"))
print(artifact.report.table("squeezenet int8"))
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = [
    "DEFAULT_FLOW",
    "FLOWS",
    "Artifact",
    "FidelityReport",
    "quantize",
]

# Loaded on first use (PEP 562), so that `edgequant --help` answers without importing torch.
_LAZY = {
    "DEFAULT_FLOW": "edgeinfer.quant.quantize",
    "Artifact": "edgeinfer.quant.quantize",
    "quantize": "edgeinfer.quant.quantize",
    "FLOWS": "edgeinfer.quant.flows",
    "FidelityReport": "edgeinfer.quant.fidelity",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule edgeinfer.quant.quantize sets the package's `quantize` to
        # that module; the name stays the function, as it was when this file imported it eagerly.
        if name == "quantize" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
