"""The quantization stage: torchvision classifiers to int8 artifacts the daemon serves
(it writes them; :mod:`edgeinfer.server.artifacts` reads them).

from edgeinfer.quant import quantize
from edgeinfer.server import WeightsSource
artifact = quantize("squeezenet", calib="clip.mp4", out=Path("model-repo"), weights=WeightsSource("imagenet"))
print(artifact.report.table("squeezenet int8"))
"""

from edgeinfer.quant.fidelity import FidelityReport
from edgeinfer.quant.flows import FLOWS
from edgeinfer.quant.quantize import DEFAULT_FLOW, Artifact, quantize

__all__ = [
    "DEFAULT_FLOW",
    "FLOWS",
    "Artifact",
    "FidelityReport",
    "quantize",
]
