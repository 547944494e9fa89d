"""int8 artifacts in a model repository: the format, and how the daemon finds, checks and loads one.

The quantization stage writes them (``edgeinfer.quant.artifact``); everything a daemon needs to read
one lives here, so serving int8 never imports the quantizer.

Layout (one folder per model and engine, Triton-like)::

    REPO/squeezenet1_0/int8-x86/model.pt          frozen TorchScript (fx flow)
                                model.pt2         AOTInductor package (pt2e flow)
                                edgeinfer.json    the sidecar: how it was made, fidelity
    REPO/squeezenet1_0/onnx-int8/model.onnx       ONNX, QDQ int8 (served by ONNX Runtime, no torch)
                       onnx-fp32/model.onnx       ONNX, fp32

The artifact loads without torchvision's model code. It refuses to load under
a different quantized engine or another torch minor release than it was made
with, since neither TorchScript's quantized ops nor AOTInductor packages promise
to carry across those.

An artifact is code: TorchScript and AOTInductor run what the file contains, with
the daemon's rights. So the daemon loads a model file only from inside the
repository folder (no ``..``, no symlink out of it) and only when its SHA-256 is
the one the sidecar recorded when edgequant wrote it; a repository is as
trustworthy as whoever can write to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.server.errors import WeightsUnavailable
from edgeinfer.server.startup_checks import SidecarError, read_checked_sidecar

if TYPE_CHECKING:  # the torch side, imported where a torch artifact is loaded: ONNX serving never imports torch
    from edgeinfer.server.registry import ModelSpec, Preprocessing
    from edgeinfer.server.runner import ModelRunner

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILES",
    "ONNX_FILE",
    "SIDECAR",
    "artifact_dir",
    "default_engine",
    "file_sha256",
    "load_int8_runner",
    "onnx_artifact_dir",
    "quiet_deprecations",
    "read_model_file",
    "read_sidecar",
]

FORMAT_VERSION = 1
SIDECAR = "edgeinfer.json"
MODEL_FILES = {"fx": "model.pt", "pt2e": "model.pt2"}
ONNX_FILE = "model.onnx"


def artifact_dir(repository: Path, model: str, engine: str) -> Path:
    return Path(repository) / model / f"int8-{engine}"


def onnx_artifact_dir(repository: Path, model: str, precision: str) -> Path:
    """Where an ONNX artifact of ``precision`` (int8 or fp32) lives: one file for every CPU architecture."""
    return Path(repository) / model / f"onnx-{precision}"


def default_engine() -> str:
    """The quantized engine for this machine: qnnpack on ARM boards, x86 (fbgemm + onednn) elsewhere."""
    return "qnnpack" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Hide the deprecation notices of the fx flow's own APIs, and only those.

    torch.ao's FX quantization and TorchScript (trace/freeze/save/load) are
    deprecated upstream in favour of torchao/PT2E and torch.export, and warn on
    every call. We still use them on purpose: they are the fastest int8 path for
    these CNNs on a small CPU today (bench/quant_flows.py), and the pt2e flow is there too.
    Not thread-safe (warnings.catch_warnings): use it in set-up code, never per frame.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        # quantized::cat requantizes inputs whose scales differ (Inception's
        # branches); the fidelity report's SQNR measures what that costs.
        warnings.filterwarnings("ignore", message=r"All inputs of this cat operator", category=UserWarning)
        yield


def _spend_quantized_tensor_warning() -> None:
    """PyTorch warns once per process that quantized tensor creation is deprecated (a C++ warn-once).
    Raised inside torch.jit.load or a TorchScript forward it bypasses Python's warnings and lands on the
    daemon's stderr; raised from a Python call it is a UserWarning that quiet_deprecations() filters.
    So it is raised here, once, from Python: the model's own calls then have nothing left to say."""
    import torch

    torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks (what the sidecar records as ``sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_model_file(folder: Path, meta: dict[str, Any], repository: Path) -> tuple[Path, bytes]:
    """The artifact's model file and its bytes, once they are known to be the ones edgequant wrote.

    Refused (WeightsUnavailable, one line naming the file): a ``file`` that leads out of the repository
    (``../``, an absolute path, a symlink to elsewhere), a sidecar without a ``sha256``, a mismatch.
    """
    name = meta.get("file")
    if not isinstance(name, str) or not name:
        raise WeightsUnavailable(f"{folder / SIDECAR} names no model file ('file')")
    path = folder / name
    root = repository.resolve()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise WeightsUnavailable(f"model file {path} named by {folder / SIDECAR} cannot be opened: {exc}") from None
    if not _inside(real, root):
        how = f"a symlink to {real}" if path.is_symlink() else str(real)
        raise WeightsUnavailable(
            f"refusing model file {path}: it is {how}, outside the repository {root} (artifacts are code: "
            f"only files inside the repository are loaded)"
        )
    if not real.is_file():
        raise WeightsUnavailable(f"model file {path} is not a regular file")
    expected = meta.get("sha256")
    if not isinstance(expected, str):
        raise WeightsUnavailable(
            f"{folder / SIDECAR} records no SHA-256 of {name} (made by an older edgequant): re-make the artifact"
        )
    data = real.read_bytes()  # verified and loaded from the same bytes: no swap in between
    found = hashlib.sha256(data).hexdigest()
    if found != expected.lower():
        raise WeightsUnavailable(
            f"model file {path} does not match the SHA-256 its sidecar records ({expected[:12]}..., found "
            f"{found[:12]}...): it changed after edgequant wrote it; re-make or restore it"
        )
    return real, data


def read_sidecar(folder: Path, *, repository: Path | None = None, model: str = "") -> dict[str, Any]:
    """The sidecar, once it holds what the daemon reads (server/startup_checks.py); else one line, as
    WeightsUnavailable: a sidecar that is not JSON, lacks a key or names an unknown flow."""
    try:
        return read_checked_sidecar(folder, repository=repository, model=model)
    except SidecarError as exc:
        raise WeightsUnavailable(str(exc)) from None


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def load_int8_runner(
    spec: ModelSpec, repository: Path | None, *, engine: str | None = None
) -> tuple[ModelRunner, Preprocessing, dict[str, Any]]:
    import torch

    from edgeinfer.server.registry import Preprocessing
    from edgeinfer.server.runner import ModelRunner

    engine = engine or default_engine()
    repository = Path(repository or "model-repo")
    folder = artifact_dir(repository, spec.name, engine)
    how = f"edgequant --model {spec.name} --calib PATH --out {repository}"
    if not (folder / SIDECAR).is_file():
        raise WeightsUnavailable(
            f"no int8 artifact for {spec.name} ({engine} engine) in {repository}: looked for {folder / SIDECAR}. "
            f"Make one with: {how}"
        )
    meta = read_sidecar(folder, repository=repository, model=spec.name)
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
    path, data = read_model_file(folder, meta, repository)
    torch.backends.quantized.engine = engine
    if meta["flow"] == "fx":
        with quiet_deprecations():
            _spend_quantized_tensor_warning()  # before the load: unpickling int8 weights creates quantized tensors
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    else:
        # AOTInductor loads from a path only: the file was checked just now, inside the repository.
        module = torch._inductor.aoti_load_package(str(path))
    meta = {**meta, "weights": f"artifact:{folder} (from {meta['weights']})"}
    return ModelRunner(module, device=torch.device("cpu")), Preprocessing.from_dict(meta["preprocessing"]), meta
