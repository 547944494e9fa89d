"""Loads a model for serving (build its runner, choose its batch sizes, assemble the served
model) and finds the loaded one a request names.

A :class:`ServedModel` bundles everything one (model, precision) needs at run
time: preprocessing, runner, batch scheduler, labels and the facts that
``GetModel`` reports. The :class:`ModelTable` resolves a request's name (or
alias) and optional precision to one of them.

Each model has a runtime (server/runtimes/): ONNX Runtime for ONNX artifacts, with numpy
preprocessing, or torch for everything else. This module imports neither: torch comes in
through :mod:`edgeinfer.server.runtimes.torch`, only for a model that runs on it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.server.batcher import BatchScheduler
from edgeinfer.server.errors import InvalidRequest, ModelNotFound, NotReady
from edgeinfer.server.frames import CpuDevice, FramePreprocessor, Preprocessing
from edgeinfer.server.inference_thread import InferenceThread, cpu_thread
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.model_names import MODEL_ALIASES, served_name
from edgeinfer.server.options import Precision, PreprocessOn, choices
from edgeinfer.server.profiling import batch_ladder, profile_batch_sizes
from edgeinfer.server.runtimes import NonFiniteScores, Runtime
from edgeinfer.server.runtimes.choice import choose_runtime

if TYPE_CHECKING:
    from edgeinfer.server.weights import WeightsSource

Device = Any  # torch.device, or CpuDevice for a model served without torch

__all__ = [
    "BuiltRunner",
    "ModelTable",
    "ServedModel",
    "auto_placement",
    "choose_batch_sizes",
    "load_model",
    "resolve_precision",
]

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    aliases: tuple[str, ...]
    architecture: str
    precision: Precision
    device: Device
    weights: str
    categories: list[str]
    preprocessing: Preprocessing
    preprocessor: FramePreprocessor
    scheduler: BatchScheduler
    preprocess_on: PreprocessOn = PreprocessOn.STREAM
    engine: str = ""
    fidelity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    runtime: str = "torch"  # "torch" or "onnxruntime": GetModel and the KServe metadata say which
    runtime_version: str = ""

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def stop(self) -> None:
        self.scheduler.stop()


@dataclass
class BuiltRunner:
    """A model ready to run, and what it is: its weights as described to clients, its int8
    engine and fidelity report (artifacts only), the largest batch it accepts, its labels."""

    runner: Runtime
    preprocessing: Preprocessing
    weights: str
    engine: str = ""
    fidelity: dict[str, Any] | None = None
    max_batch: int | None = None  # pt2e packages are compiled for a fixed batch size
    architecture: str = ""
    categories: list[str] = field(default_factory=list)


def resolve_precision(precision: str, device: Device) -> Precision:
    try:
        wanted = Precision(precision)
    except ValueError:
        raise InvalidRequest(
            f"unknown precision {precision!r}; choose one of {', '.join(choices(Precision))}"
        ) from None
    if wanted is Precision.AUTO:
        return Precision.FP16 if device.type == "cuda" else Precision.FP32
    if wanted is Precision.FP16 and device.type != "cuda":
        raise InvalidRequest("fp16 is served on CUDA only; on the CPU use fp32 or int8")
    if wanted is Precision.INT8 and device.type != "cpu":
        raise InvalidRequest("int8 runs on the CPU only; on CUDA serve fp16 (--precision fp16)")
    return wanted


def choose_batch_sizes(
    built: BuiltRunner,
    *,
    precision: Precision,
    device: Device,
    max_batch: int,
    batch_sizes: Sequence[int] | None,
    warmup: bool,
    label: str,
) -> tuple[int, ...] | None:
    """The batch sizes the scheduler may run (None: all up to ``max_batch``), after warming the model up.

    Given ``batch_sizes`` are kept. Otherwise on CUDA the powers of two, each warmed up (cuDNN
    autotunes once per input shape); on the CPU the sizes measured to be cheaper per frame than
    single frames (:func:`profile_batch_sizes`; all sizes without ``warmup``).
    """
    sizes = tuple(batch_sizes) if batch_sizes is not None else None
    if sizes is None and device.type == "cuda":
        sizes = batch_ladder(max_batch)
    if not warmup:
        return sizes
    crop = built.preprocessing.crop_size
    try:
        built.runner.warmup(crop, batch_sizes=sizes or (1,))
    except NonFiniteScores as exc:
        hint = (
            "its activations overflow fp16 (largest value 65504) with these weights: serve it in fp32 "
            "(--precision fp32)"
            if precision is Precision.FP16
            else "check its weights"
        )
        raise InvalidRequest(f"{label} (weights {built.weights}) gives {exc}; {hint}") from None
    if sizes is None and max_batch > 1:
        # A board's daemon (ONNX Runtime) should serve within a second of its process starting (issue 27):
        # its profile gets half a second, enough to time sizes 1-8 of SqueezeNet int8 on 2 cores (8 is its
        # cheapest per frame there, 5.2 ms against 6.0 at 1; a quarter second timed 1-4 only and served
        # back-to-back frames 8% dearer); a workstation's gets three. --batch-sizes skips the profile.
        budget_s = 0.5 if getattr(built.runner, "name", "torch") == "onnxruntime" else 3.0
        sizes = profile_batch_sizes(built.runner, crop, max_batch, budget_s=budget_s, log_as=label)
    return sizes


def auto_placement(device: Device, threads: int) -> PreprocessOn:
    """Where ``--preprocess-on auto`` decodes: beside the model when it has a core to do it on.

    On CUDA, and on a CPU whose cores the model's intra-op threads leave one free, each
    stream's reader decodes while the model runs (a pipeline: at 1280x720 on 2 cores with
    --threads 1, ~1.1x the frames of the in-process limit; bench/results/README.md). When
    the model's threads take every core, a decode beside them would preempt one of them
    and stall the whole team at its next barrier: the inference thread decodes, in turn.
    """
    if device.type != "cpu":
        return PreprocessOn.STREAM
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return PreprocessOn.STREAM if threads < cores else PreprocessOn.INFERENCE


def load_model(
    name: str,
    *,
    precision: str = "auto",
    device: str | Device = "cpu",
    weights: WeightsSource | None = None,
    repository: Path | None = None,
    max_frame_bytes: int = 8 << 20,
    limits: FrameLimits | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 0.0,
    batch_sizes: Sequence[int] | None = None,
    preprocess_on: str = "auto",
    warmup: bool = True,
    cuda_graphs: bool = False,
    runtime: str = "auto",
    threads: int | None = None,
) -> ServedModel:
    """Load one model for serving, on the inference thread that will run it.

    ``runtime``: "auto" (ONNX Runtime for a model with an ONNX artifact of that precision in
    ``repository``, else torch), "torch" or "onnxruntime" (server/runtimes/choice.py).
    ``batch_sizes``: the sizes the scheduler may run (up to ``max_batch``); None chooses
    them (:func:`choose_batch_sizes`). ``cuda_graphs``: on CUDA, replay each of those sizes
    as a CUDA graph (:meth:`ModelRunner.capture_graphs`).
    ``limits``: the frame limits its preprocessor holds each frame to (default: ``max_frame_bytes``
    and the default pixel limits). ``threads``: ONNX Runtime's intra-op threads (default: torch's
    count on the torch runtime, all cores on ONNX Runtime).
    """
    try:
        placement = PreprocessOn(preprocess_on)
    except ValueError:
        raise InvalidRequest(
            f"preprocess_on must be one of {', '.join(choices(PreprocessOn))}, got {preprocess_on!r}"
        ) from None
    canonical = served_name(name)
    limits = limits or FrameLimits(max_frame_bytes=max_frame_bytes)
    chosen = choose_runtime(canonical, precision, str(device), repository, runtime)
    if chosen == "onnxruntime":
        if cuda_graphs:
            raise InvalidRequest(f"--cuda-graphs replays GPU work: {canonical} runs on onnxruntime, on the CPU")
        device = CpuDevice()
        resolved = resolve_precision(precision, device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        intra = max(1, threads or cores)

        def build() -> BuiltRunner:
            return _build_onnx(canonical, resolved, repository, intra)

        def preprocessor(built: BuiltRunner) -> FramePreprocessor:
            from edgeinfer.server.preprocess_numpy import NumpyPreprocessor

            return NumpyPreprocessor(built.preprocessing, limits=limits)

    else:
        from edgeinfer.server.runtimes import torch as torch_runtime

        device = torch_runtime.prepare_device(device, cuda_graphs=cuda_graphs)
        resolved = resolve_precision(precision, device)
        intra = torch_runtime.torch.get_num_threads()
        source = weights

        def build() -> BuiltRunner:
            from edgeinfer.server.weights import WeightsSource

            return torch_runtime.build_runner(
                canonical, resolved, device, source or WeightsSource("imagenet"), repository
            )

        def preprocessor(built: BuiltRunner) -> FramePreprocessor:
            return torch_runtime.make_preprocessor(built, device, limits)

    if placement is PreprocessOn.AUTO:
        placement = auto_placement(device, intra)
    label = f"{canonical} {resolved}"
    # CPU models load, warm up and run on the daemon's one CPU inference thread (one
    # OpenMP team; see server/inference_thread.py); a CUDA model gets a dedicated one,
    # which ends with the model.
    thread = cpu_thread() if device.type == "cpu" else InferenceThread(f"infer-{canonical}-{resolved}")

    def assemble() -> ServedModel:
        built = build()
        most = min(max_batch, built.max_batch or max_batch)
        sizes = choose_batch_sizes(
            built,
            precision=resolved,
            device=device,
            max_batch=most,
            batch_sizes=batch_sizes,
            warmup=warmup,
            label=label,
        )
        if cuda_graphs:
            built.runner.capture_graphs(built.preprocessing.crop_size, sizes or batch_ladder(most))  # type: ignore[attr-defined]
        scheduler = BatchScheduler(
            built.runner, max_batch=most, max_wait_ms=max_wait_ms, batch_sizes=sizes, name=label, thread=thread
        )
        described = built.runner.describe()
        log.debug(  # edgeserver prints its own line for each model: one is enough in its log
            "loaded %s on %s with %s %s (weights %s; batch sizes %s; preprocessing on the %s thread%s)",
            label,
            device,
            described["runtime"],
            described["version"],
            built.weights,
            list(scheduler.batch_sizes),
            placement,
            f"; CUDA graphs for {list(built.runner.graph_sizes)}" if cuda_graphs else "",  # type: ignore[attr-defined]
        )
        return ServedModel(
            name=canonical,
            aliases=MODEL_ALIASES[canonical],
            architecture=built.architecture,
            precision=resolved,
            device=device,
            weights=built.weights,
            categories=built.categories,
            preprocessing=built.preprocessing,
            preprocessor=preprocessor(built),
            scheduler=scheduler,
            preprocess_on=placement,
            engine=built.engine,
            fidelity=built.fidelity,
            runtime=described["runtime"],
            runtime_version=described["version"],
        )

    try:
        return thread.call(assemble)
    except BaseException:
        if thread.dedicated:
            thread.stop()
        raise


def _build_onnx(name: str, precision: Precision, repository: Path | None, threads: int) -> BuiltRunner:
    from edgeinfer.server.runtimes.onnx import load_onnx_artifact

    runner, meta = load_onnx_artifact(name, str(precision), repository, threads=threads)
    folder = Path(repository or "model-repo") / name / f"onnx-{precision}"
    return BuiltRunner(
        runner,
        Preprocessing.from_dict(meta["preprocessing"]),
        f"artifact:{folder} (from {meta.get('weights', 'unknown')})",
        "",
        meta.get("fidelity"),
        meta.get("max_batch"),
        architecture=str(meta.get("architecture", name)),
        categories=[str(label) for label in meta["labels"]],
    )


class ModelTable:
    """The models this daemon serves, keyed by (canonical name, precision)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ServedModel] = {}
        self._lock = threading.Lock()
        self.ready = False

    def add(self, model: ServedModel) -> None:
        with self._lock:
            key = (model.name, model.precision)
            if key in self._models:
                raise InvalidRequest(f"{model.name} {model.precision} is loaded twice")
            self._models[key] = model

    def all(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def resolve(self, name: str, precision: str = "") -> ServedModel:
        if not self.ready:
            raise NotReady("the daemon is still loading its models; retry when health reports SERVING")
        if not name:
            raise InvalidRequest("no model named: set model.name (e.g. 'squeezenet')")
        canonical = served_name(name)  # unknown architecture -> NOT_FOUND naming the known ones
        loaded = [m for m in self.all() if m.name == canonical]
        if not loaded:
            served = ", ".join(f"{m.name}:{m.precision}" for m in self.all())
            raise ModelNotFound(
                f"model {canonical} is not loaded in this daemon (serving: {served}); "
                f"start edgeserver with --model {canonical}"
            )
        if not precision:
            return loaded[0]
        for m in loaded:
            if m.precision == precision:
                return m
        have = ", ".join(m.precision for m in loaded)
        raise ModelNotFound(
            f"{canonical} is served in {have}, not {precision}: ask for --precision {loaded[0].precision}, "
            f"or start edgeserver with --model {canonical}:{precision}"
        )

    def stop(self) -> None:
        for m in self.all():
            m.stop()
