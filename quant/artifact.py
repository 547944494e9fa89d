"""int8 artifacts in a model repository: write, find, check and load.

Layout (one folder per model and engine, Triton-like)::

    REPO/squeezenet1_0/int8-x86/model.pt          frozen TorchScript (fx flow)
                                model.pt2         AOTInductor package (pt2e flow)
                                edgeinfer.json    the sidecar: how it was made, fidelity

The artifact loads without torchvision's model code. It refuses to load under
a different quantized engine or another torch minor release than it was made
with, since neither TorchScript's quantized ops nor AOTInductor packages promise
to carry across those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgeinfer.quant.flows import default_engine, quiet_deprecations
from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.registry import ModelSpec, Preprocessing
from edgeinfer.server.runner import ModelRunner

__all__ = ["FORMAT_VERSION", "SIDECAR", "artifact_dir", "load_int8_runner", "read_sidecar", "write_sidecar"]

FORMAT_VERSION = 1
SIDECAR = "edgeinfer.json"
MODEL_FILES = {"fx": "model.pt", "pt2e": "model.pt2"}


def artifact_dir(repository: Path, model: str, engine: str) -> Path:
    return Path(repository) / model / f"int8-{engine}"


def write_sidecar(folder: Path, meta: dict[str, Any]) -> Path:
    path = folder / SIDECAR
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
    return path


def read_sidecar(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SIDECAR).read_text())


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def load_int8_runner(
    spec: ModelSpec, repository: Path | None, *, engine: str | None = None
) -> tuple[ModelRunner, Preprocessing, dict[str, Any]]:
    engine = engine or default_engine()
    repository = Path(repository or "model-repo")
    folder = artifact_dir(repository, spec.name, engine)
    how = f"edgequant --model {spec.name} --calib PATH --out {repository}"
    if not (folder / SIDECAR).is_file():
        raise WeightsUnavailable(
            f"no int8 artifact for {spec.name} ({engine} engine) in {repository}: looked for {folder / SIDECAR}. "
            f"Make one with: {how}"
        )
    meta = read_sidecar(folder)
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsUnavailable(f"{folder} has artifact format {meta.get('format_version')}; re-run {how}")
    if meta["engine"] != engine:
        raise WeightsUnavailable(
            f"{folder} was quantized for the {meta['engine']} engine but this daemon runs {engine}; re-run {how}"
        )
    if engine not in torch.backends.quantized.supported_engines:
        raise WeightsUnavailable(f"this torch build has no {engine} quantized engine")
    if _minor(meta["torch"]) != _minor(torch.__version__):
        raise WeightsUnavailable(
            f"{folder} was made with torch {meta['torch']}, this daemon runs torch {torch.__version__}; "
            f"artifacts do not carry across torch releases: re-run {how}"
        )
    torch.backends.quantized.engine = engine
    path = folder / meta["file"]
    if meta["flow"] == "fx":
        with quiet_deprecations():
            module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch._inductor.aoti_load_package(str(path))
    meta = {**meta, "weights": f"artifact:{folder} (from {meta['weights']})"}
    return ModelRunner(module, device=torch.device("cpu")), Preprocessing.from_dict(meta["preprocessing"]), meta
