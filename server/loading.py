"""Loads models for serving and finds the loaded one a request names.

A :class:`ServedModel` bundles everything one (model, precision) needs at
run time: preprocessing, runner, batch scheduler, labels and the facts that
``GetModel`` reports. The :class:`ModelTable` resolves a request's name (or
alias) and optional precision to one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeinfer.server.artifacts import load_int8_runner
from edgeinfer.server.batcher import BatchScheduler, InferenceThread, batch_ladder, cpu_thread, profile_batch_sizes
from edgeinfer.server.errors import InvalidRequest, ModelNotFound, NotReady
from edgeinfer.server.limits import FrameLimits
from edgeinfer.server.preprocess import Preprocessor
from edgeinfer.server.registry import ModelSpec, Preprocessing, get_spec
from edgeinfer.server.runner import ModelRunner, NonFiniteScores
from edgeinfer.server.weights import WeightsSource, build_model

__all__ = ["PRECISIONS", "PREPROCESS_ON", "ModelTable", "ServedModel", "load_model", "resolve_precision"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")

# Where a frame is decoded and preprocessed:
#   worker  on the model's inference thread, right before the forward pass. The
#           CPU default: decode, preprocessing and inference share one OpenMP team
#           instead of fighting over the same few cores (measured in
#           bench/serve_bench.py), and a frame the `latest` policy drops is never
#           decoded at all.
#   stream  on each stream's reader thread, overlapping the previous frame's
#           inference. The CUDA default (nvjpeg decodes, the GPU infers); on a CPU
#           with cores to spare, pair it with --threads below the core count.
# (Intra-op threads are one process-wide setting: calling torch.set_num_threads
# from a reader thread measured 5x slower int8 inference on the worker.)
PREPROCESS_ON = ("auto", "worker", "stream")


@dataclass
class ServedModel:
    name: str
    aliases: tuple[str, ...]
    architecture: str
    precision: str
    device: torch.device
    weights: str
    categories: list[str]
    preprocessing: Preprocessing
    preprocessor: Preprocessor
    scheduler: BatchScheduler
    preprocess_on: str = "stream"
    engine: str = ""
    fidelity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop_size

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def stop(self) -> None:
        self.scheduler.stop()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise InvalidRequest(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise InvalidRequest("fp16 is served on CUDA only; on the CPU use fp32 or int8")
    if precision == "int8" and device.type != "cpu":
        raise InvalidRequest("int8 runs on the CPU only; on CUDA serve fp16 (--precision fp16)")
    return precision


def load_model(
    name: str,
    *,
    precision: str = "auto",
    device: str | torch.device = "cpu",
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
) -> ServedModel:
    """Load one model for serving.

    ``batch_sizes``: the sizes the scheduler may run (up to ``max_batch``). None:
    on the CPU, the sizes measured here to be cheaper per frame than single
    frames (:func:`profile_batch_sizes`; all sizes without ``warmup``); on CUDA,
    the powers of two, each warmed up (cuDNN autotunes once per input shape).
    ``limits``: the frame limits its preprocessor holds each frame to (default: ``max_frame_bytes``
    and the default pixel limits).
    ``cuda_graphs``: on CUDA, replay each of those sizes as a CUDA graph
    (:meth:`ModelRunner.capture_graphs`).
    """
    if preprocess_on not in PREPROCESS_ON:
        raise InvalidRequest(f"preprocess_on must be one of {', '.join(PREPROCESS_ON)}, got {preprocess_on!r}")
    spec = get_spec(name)
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise InvalidRequest(f"--cuda-graphs replays GPU work: it needs --device cuda, not {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequest("--device cuda asked for, but torch sees no CUDA device here")
        # A served model sees one input shape per batch size: let cuDNN pick its
        # fastest kernels once (during warm-up) instead of a generic default.
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(precision, device)
    weights = weights or WeightsSource("imagenet")
    # CPU models load, warm up and run on the daemon's one CPU inference thread
    # (one OpenMP team; see server/batcher.py); a CUDA model gets a dedicated one,
    # which ends with the model.
    thread = cpu_thread() if device.type == "cpu" else InferenceThread(f"infer-{spec.name}-{precision}")

    def build() -> ServedModel:
        most, sizes = max_batch, batch_sizes
        if precision == "int8":
            runner, preprocessing, meta = load_int8_runner(spec, repository)
            described, engine, fidelity = meta["weights"], meta["engine"], meta.get("fidelity")
            if meta.get("max_batch"):  # pt2e packages are compiled for a fixed batch size
                most = min(most, meta["max_batch"])
        else:
            runner, preprocessing = _fp_runner(spec, weights, device, precision)
            described, engine, fidelity = weights.describe(spec), "", None

        placement = preprocess_on
        if placement == "auto":
            placement = "worker" if device.type == "cpu" else "stream"
        preprocessor = Preprocessor(
            preprocessing, device=device, dtype=runner.dtype, max_frame_bytes=max_frame_bytes, limits=limits
        )
        if sizes is None and device.type == "cuda":
            sizes = batch_ladder(most)
        if warmup:
            try:
                runner.warmup(preprocessing.crop_size, batch_sizes=tuple(sizes or (1,)))
            except NonFiniteScores as exc:
                hint = (
                    "its activations overflow fp16 (largest value 65504) with these weights: serve it in fp32 "
                    "(--precision fp32)"
                    if precision == "fp16"
                    else "check its weights"
                )
                raise InvalidRequest(f"{spec.name} {precision} (weights {described}) gives {exc}; {hint}") from None
            if sizes is None and most > 1:
                sizes = profile_batch_sizes(runner, preprocessing.crop_size, most, log_as=f"{spec.name} {precision}")
        if cuda_graphs:
            runner.capture_graphs(preprocessing.crop_size, tuple(sizes or batch_ladder(most)))
        scheduler = BatchScheduler(
            runner,
            max_batch=most,
            max_wait_ms=max_wait_ms,
            batch_sizes=sizes,
            name=f"{spec.name}-{precision}",
            thread=thread,
        )
        log.info(
            "loaded %s %s on %s (weights %s; batch sizes %s; preprocessing on the %s thread%s)",
            spec.name,
            precision,
            device,
            described,
            list(scheduler.batch_sizes),
            placement,
            f"; CUDA graphs for {list(runner.graph_sizes)}" if cuda_graphs else "",
        )
        return ServedModel(
            name=spec.name,
            aliases=spec.aliases,
            architecture=spec.build.__name__.lstrip("_"),
            precision=precision,
            device=device,
            weights=described,
            categories=spec.categories,
            preprocessing=preprocessing,
            preprocessor=preprocessor,
            scheduler=scheduler,
            preprocess_on=placement,
            engine=engine,
            fidelity=fidelity,
        )

    try:
        return thread.call(build)
    except BaseException:
        if thread.dedicated:
            thread.stop()
        raise


def _fp_runner(
    spec: ModelSpec, weights: WeightsSource, device: torch.device, precision: str
) -> tuple[ModelRunner, Preprocessing]:
    module = build_model(spec, weights)
    if precision == "fp16":
        module = module.to(device=device, dtype=torch.float16, memory_format=torch.channels_last)
        return ModelRunner(module, device=device, dtype=torch.float16, channels_last=True), spec.preprocessing
    return ModelRunner(module.to(device), device=device), spec.preprocessing


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
        spec = get_spec(name)  # unknown architecture -> NOT_FOUND naming the known ones
        loaded = [m for m in self.all() if m.name == spec.name]
        if not loaded:
            served = ", ".join(f"{m.name}:{m.precision}" for m in self.all())
            raise ModelNotFound(
                f"model {spec.name} is not loaded in this daemon (serving: {served}); "
                f"start edgeserver with --model {spec.name}"
            )
        if not precision:
            return loaded[0]
        for m in loaded:
            if m.precision == precision:
                return m
        have = ", ".join(m.precision for m in loaded)
        raise ModelNotFound(f"{spec.name} is served in {have}, not {precision}")

    def stop(self) -> None:
        for m in self.all():
            m.stop()
