"""What `edgeclient` prints: one line (or JSON object) per answer, and the summary at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from edgeinfer.client.results import FrameResult, ModelInfo, percent

__all__ = ["REAL_WEIGHTS_HINT", "Summary", "json_record", "line", "warn_random_weights"]

REAL_WEIGHTS_HINT = (
    "the labels are real ImageNet names but mean nothing; for real predictions start edgeserver with "
    "--weights imagenet (or a state_dict path), or run the demo as WEIGHTS=imagenet scripts/demo.sh"
)


@dataclass
class Summary:
    sent: int = 0
    predicted: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    gaps: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    def add(self, result: FrameResult) -> None:
        if result.prediction:
            self.predicted += 1
            if result.latency_ms is not None:
                self.latencies_ms.append(result.latency_ms)
        elif result.dropped is not None:
            self.dropped += 1
        else:
            self.errors += 1

    @property
    def answered(self) -> int:
        return self.predicted + self.dropped + self.errors

    def render(self) -> str:
        elapsed = (self.ended or time.perf_counter()) - self.started
        fps = self.predicted / elapsed if elapsed > 0 else 0.0
        if self.latencies_ms:
            p50, p95 = np.percentile(self.latencies_ms, [50, 95])
            latency = f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        else:
            latency = "latency n/a"
        return (
            f"summary: sent {self.sent}, answered {self.answered} "
            f"(predicted {self.predicted}, dropped {self.dropped}, errors {self.errors}), "
            f"reconnects {self.reconnects}, source gaps {self.gaps}, "
            f"{fps:.1f} predictions/s over {elapsed:.1f} s, {latency}"
        )


def line(result: FrameResult, file: str | None = None) -> str:
    """One answer in a line; ``file``: the image it belongs to (--images)."""
    head = f"#{result.sequence:<5d}" + (f" {file}" if file is not None else "")
    if result.prediction:
        p = result.prediction
        classes = " | ".join(f"{c.label} {percent(c.probability)}" for c in p.classes)
        latency = f"{result.latency_ms:7.1f} ms" if result.latency_ms is not None else "       ?"
        return f"{head} {latency}  {classes}"
    if result.dropped is not None:
        return f"{head} dropped  ({result.dropped})"
    return f"{head} error    {result.error_code.name if result.error_code else '?'}: {result.error}"


def json_record(result: FrameResult, file: str | None = None) -> dict[str, Any]:
    record = result.to_json()
    if file is not None:
        record = {"sequence": record.pop("sequence"), "file": file, **record}
    return record


def warn_random_weights(info: ModelInfo, err: TextIO) -> None:
    if "random" in info.weights:
        print(f"edgeclient: note: {info.name} runs with random weights ({info.weights}): {REAL_WEIGHTS_HINT}", file=err)
