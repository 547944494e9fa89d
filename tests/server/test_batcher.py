from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from edgeinfer.server.batcher import BatchScheduler, Job, allowed_sizes
from edgeinfer.server.errors import InternalError
from edgeinfer.server.inference_thread import InferenceThread, cpu_thread
from edgeinfer.server.preprocess import PreprocessedFrame
from edgeinfer.server.runner import BatchOutput
from fakes import SlowRunner, wait_until_taken


def _job(value: float, k: int = 3) -> Job:
    return Job(PreprocessedFrame(torch.full((3, 8, 8), value), 0.0, 0.0), k)


@contextlib.contextmanager
def held(first: float = 0.0, **kwargs: Any) -> Iterator[tuple[BatchScheduler, SlowRunner, Job]]:
    """A scheduler whose thread is held in its first batch (a job of ``first``): what comes next waits in line.

    ``runner.gate.set()`` lets it go; the scheduler stops on the way out.
    """
    runner = SlowRunner()
    runner.gate.clear()
    sched = BatchScheduler(runner, **kwargs)
    try:
        blocker = sched.submit(_job(first))
        wait_until_taken(sched)  # the thread took it and waits at the gate
        yield sched, runner, blocker
    finally:
        runner.gate.set()
        sched.stop()


def test_waiting_jobs_from_many_streams_run_as_one_batch() -> None:
    with held(0.1, max_batch=4) as (sched, runner, first):
        rest = [sched.submit(_job(0.1 * i)) for i in range(2, 8)]
        runner.gate.set()
        results = [j.future.result(5) for j in [first, *rest]]
    assert runner.batch_sizes == [1, 4, 2]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]
    # Each job gets its own row back: class = round(value * 10).
    assert [r.indices[0] for r in results] == [1, 2, 3, 4, 5, 6, 7]


def test_each_job_gets_its_own_top_k() -> None:
    with held(max_batch=8) as (sched, runner, blocker):
        small, big = sched.submit(_job(0.2, k=1)), sched.submit(_job(0.2, k=5))
        runner.gate.set()
        blocker.future.result(5)
        assert len(small.future.result(5).indices) == 1
        assert len(big.future.result(5).indices) == 5


def test_cancel_only_before_start() -> None:
    with held(0.1, max_batch=1) as (sched, runner, running):
        waiting = sched.submit(_job(0.2))
        assert sched.cancel(waiting) is True
        assert sched.cancel(running) is False
        runner.gate.set()
        assert running.future.result(5).indices[0] == 1
        assert not waiting.future.done() and sched.pending() == 0


def test_a_failing_batch_fails_its_jobs_not_the_worker() -> None:
    class Boom(SlowRunner):
        calls = 0

        def infer(self, batch: torch.Tensor, k: int):  # type: ignore[override]
            Boom.calls += 1
            if Boom.calls == 1:
                raise RuntimeError("kernel exploded")
            return super().infer(batch, k)

    sched = BatchScheduler(Boom(), max_batch=1)
    try:
        bad = sched.submit(_job(0.1))
        error = bad.future.exception(5)
        assert isinstance(error, InternalError) and "kernel exploded" in error.details
        assert sched.submit(_job(0.3)).future.result(5).indices[0] == 3
    finally:
        sched.stop()


def test_jobs_with_on_done_are_answered_on_the_inference_thread_and_a_failing_one_costs_no_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[tuple[float, str, object]] = []

    def answer_to(value: float, fail: bool = False):  # type: ignore[no-untyped-def]
        def on_done(answer: object) -> None:
            answers.append((value, threading.current_thread().name, answer))
            if fail:
                raise RuntimeError("a bug in the stream's callback")

        return on_done

    def bad_frame() -> PreprocessedFrame:
        raise ValueError("not a JPEG")

    with held(max_batch=4) as (sched, runner, blocker):
        jobs = [
            Job(PreprocessedFrame(torch.full((3, 8, 8), 0.2), 0.0, 0.0), 3, answer_to(0.2, fail=True)),
            Job(bad_frame, 3, answer_to(-1.0)),
            Job(PreprocessedFrame(torch.full((3, 8, 8), 0.4), 0.0, 0.0), 3, answer_to(0.4)),
        ]
        assert not any(hasattr(j, "future") for j in jobs)  # the answer goes to on_done only
        assert all("on_done=" in repr(j) for j in jobs)  # a log line may print one
        for j in jobs:
            sched.submit(j)
        runner.gate.set()
        blocker.future.result(5)
        wait_until_taken(sched)  # the three are cut as one batch before the last job comes
        wait_for = threading.Event()
        sched.submit(Job(PreprocessedFrame(torch.zeros(3, 8, 8), 0.0, 0.0), 1, lambda _: wait_for.set()))
        assert wait_for.wait(5)
    by_value = {v: (thread, answer) for v, thread, answer in answers}
    assert {thread for thread, _ in by_value.values()} == {"infer-model"}
    assert isinstance(by_value[-1.0][1], ValueError)  # the bad frame's answer is its error
    # 0.2's callback raised after it had its answer; 0.4, in the same batch, still got its own.
    assert by_value[0.2][1].indices[0] == 2 and by_value[0.4][1].indices[0] == 4  # type: ignore[union-attr]
    assert runner.batch_sizes == [1, 2, 1]
    assert "answering a frame failed" in caplog.text and "a bug in the stream's callback" in caplog.text


def test_only_allowed_batch_sizes_run_and_order_is_kept() -> None:
    with held(0.1, max_batch=8, batch_sizes=[1, 4]) as (sched, runner, first):
        rest = [sched.submit(_job(0.1 * i)) for i in range(2, 9)]  # 7 waiting: 4, then 1, 1, 1
        runner.gate.set()
        results = [j.future.result(5) for j in [first, *rest]]
    assert sched.batch_sizes == (1, 4) and sched.max_batch == 4
    assert runner.batch_sizes == [1, 4, 1, 1, 1]
    assert [r.indices[0] for r in results] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_deferred_preprocessing_runs_on_the_worker_and_a_bad_frame_leaves_its_batch() -> None:
    seen: list[str] = []

    def frame(value: float):  # type: ignore[no-untyped-def]
        def make() -> PreprocessedFrame:
            seen.append(threading.current_thread().name)
            if value < 0:
                raise ValueError("not a JPEG")
            return PreprocessedFrame(torch.full((3, 8, 8), value), 1.5, 2.5)

        return make

    with held(max_batch=4) as (sched, runner, blocker):
        jobs = [sched.submit(Job(frame(v), 3)) for v in (0.2, -1.0, 0.4)]
        runner.gate.set()
        blocker.future.result(5)
        good, bad, other = (j.future for j in jobs)
        assert good.result(5).indices[0] == 2 and other.result(5).indices[0] == 4
        assert (good.result().decode_ms, good.result().preprocess_ms) == (1.5, 2.5)
        assert isinstance(bad.exception(5), ValueError)
    assert runner.batch_sizes == [1, 2]  # the bad frame left the batch of three
    assert set(seen) == {"infer-model"}


def test_allowed_sizes() -> None:
    assert allowed_sizes(None, 3) == (1, 2, 3)
    assert allowed_sizes([8, 4, 16], 8) == (1, 4, 8)
    with pytest.raises(ValueError):
        allowed_sizes([0, 2], 4)


class NamedRunner(SlowRunner):
    """Records, per call, the model's name and the thread it ran on."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
        self.log.append((self.name, threading.current_thread().name))
        return super().infer(batch, k)


def test_models_sharing_a_thread_run_oldest_job_first_on_that_thread() -> None:
    thread = InferenceThread("infer-test")
    ran: list[tuple[str, str]] = []
    a, b = NamedRunner("a", ran), NamedRunner("b", ran)
    sched_a = BatchScheduler(a, max_batch=1, thread=thread)  # type: ignore[arg-type]
    sched_b = BatchScheduler(b, max_batch=1, thread=thread)  # type: ignore[arg-type]
    gate = threading.Event()
    try:
        blocked = threading.Thread(target=thread.call, args=(gate.wait,))  # hold the thread busy
        blocked.start()
        jobs = [sched_a.submit(_job(0.1)), sched_b.submit(_job(0.2)), sched_a.submit(_job(0.3))]
        gate.set()
        assert [j.future.result(5).indices[0] for j in jobs] == [1, 2, 3]
        blocked.join(5)
    finally:
        sched_a.stop()
        sched_b.stop()
        thread.stop()
    assert ran == [("a", "infer-test"), ("b", "infer-test"), ("a", "infer-test")]


def test_stopping_a_model_on_a_shared_thread_waits_for_its_running_batch() -> None:
    """A forward pass must not outlive its model's stop(): at process exit it would abort the process."""
    thread = InferenceThread("infer-test", dedicated=False)
    sched = BatchScheduler(SlowRunner(delay_s=0.3), max_batch=1, thread=thread)  # type: ignore[arg-type]
    try:
        job = sched.submit(_job(0.1))
        wait_until_taken(sched)  # now in its 0.3 s forward pass
        sched.stop()
        assert job.future.done() and job.future.result().indices[0] == 1
    finally:
        thread.stop()


def test_a_lone_job_waits_for_company_up_to_the_batch_wait() -> None:
    runner = SlowRunner()
    sched = BatchScheduler(runner, max_batch=2, max_wait_ms=60_000)
    lone = BatchScheduler(SlowRunner(), max_batch=2, max_wait_ms=30)
    try:
        # A full batch runs at once, whatever is left of the wait.
        pair = [sched.submit(_job(0.1)), sched.submit(_job(0.2))]
        assert [j.future.result(5).batch_size for j in pair] == [2, 2]
        # Alone, a frame runs once it has waited the batch wait, counted from its arrival.
        result = lone.submit(_job(0.3)).future.result(5)
    finally:
        sched.stop()
        lone.stop()
    assert runner.batch_sizes == [2]
    assert result.batch_size == 1 and result.indices[0] == 3
    assert result.queue_ms >= 30


def test_a_model_waiting_for_company_does_not_hold_the_shared_thread() -> None:
    thread = InferenceThread("infer-test")
    ran: list[tuple[str, str]] = []
    patient = BatchScheduler(NamedRunner("a", ran), max_batch=4, max_wait_ms=60_000, thread=thread)  # type: ignore[arg-type]
    eager = BatchScheduler(NamedRunner("b", ran), max_batch=1, thread=thread)  # type: ignore[arg-type]
    try:
        waiting = patient.submit(_job(0.1))
        assert eager.submit(_job(0.2)).future.result(5).indices[0] == 2  # b runs while a waits
        assert not waiting.future.done() and patient.pending() == 1
        patient.stop()  # stopping ends the wait: the waiting frame runs, alone
        assert waiting.future.result(5).batch_size == 1
    finally:
        patient.stop()
        eager.stop()
        thread.stop()
    assert ran == [("b", "infer-test"), ("a", "infer-test")]


def test_a_replacing_job_keeps_the_place_in_line_and_the_batch_wait() -> None:
    with held(max_batch=8) as (sched, runner, blocker):
        a1, b1 = sched.submit(_job(0.1)), sched.submit(_job(0.2))
        a2 = _job(0.3)
        assert sched.replace(a1, a2)  # a's newer frame, still ahead of b's
        runner.gate.set()
        assert blocker.future.result(5).batch_size == 1
        assert [a2.future.result(5).indices[0], b1.future.result(5).indices[0]] == [3, 2]
        assert not a1.future.done() and a1.state == "cancelled"
        assert not sched.replace(a2, late := _job(0.4))  # a2 ran: the next one queues normally
        assert late.future.result(5).indices[0] == 4
    assert runner.batch_sizes == [1, 2, 1]

    # A stream faster than its batch wait is not pushed past it at every frame.
    patient = BatchScheduler(SlowRunner(), max_batch=4, max_wait_ms=60_000)
    try:
        first = patient.submit(_job(0.1))
        with patient.thread.cond:
            deadline = patient.ready_at()
        newer = _job(0.2)
        assert patient.replace(first, newer)
        with patient.thread.cond:
            assert patient.ready_at() == deadline and patient.pending() == 1
    finally:
        patient.stop()
    assert newer.future.result(5).indices[0] == 2 and not first.future.done()


def test_call_runs_on_the_thread_and_hands_back_results_and_errors() -> None:
    thread = InferenceThread("infer-test")
    try:
        assert thread.call(lambda: threading.current_thread().name) == "infer-test"
        with pytest.raises(ZeroDivisionError):
            thread.call(lambda: 1 / 0)
        assert thread.call(lambda: thread.call(lambda: 7)) == 7  # re-entrant from the thread itself
    finally:
        thread.stop()


def test_cpu_models_load_and_infer_on_the_one_cpu_thread() -> None:
    # One OpenMP team per daemon: every CPU model shares cpu_thread(), warm-up included.
    from edgeinfer.server import WeightsSource, load_model

    seen: list[str] = []
    models = [
        load_model(name, weights=WeightsSource("random", seed=0), batch_sizes=[1], max_batch=1)
        for name in ("squeezenet1_1", "squeezenet1_0")
    ]
    try:
        for m in models:
            assert m.scheduler.thread is cpu_thread()
            infer = m.scheduler.runner.infer
            m.scheduler.runner.infer = lambda x, k, infer=infer: (
                seen.append(threading.current_thread().name) or infer(x, k)
            )  # type: ignore[method-assign]
            job = m.scheduler.submit(Job(PreprocessedFrame(torch.zeros(3, 224, 224), 0.0, 0.0), 1))
            assert len(job.future.result(30).indices) == 1
    finally:
        for m in models:
            m.stop()
    assert seen == ["infer-cpu", "infer-cpu"]


def test_a_frame_with_non_finite_scores_gets_an_error_and_its_batch_mates_their_answers() -> None:
    class Overflowing(SlowRunner):
        """Like an fp16 model whose activations overflow on some frames: NaN scores for those rows."""

        def infer(self, batch: torch.Tensor, k: int):  # type: ignore[override]
            finite = torch.isfinite(batch.float().mean(dim=(1, 2, 3)))
            out = super().infer(torch.where(finite[:, None, None, None], batch, 0.0), k)
            out.probabilities[~finite] = float("nan")
            return out

    runner = Overflowing()
    runner.gate.clear()
    sched = BatchScheduler(runner, max_batch=4)
    try:
        first = sched.submit(_job(0.1))
        wait_until_taken(sched)
        before, bad, after = (sched.submit(_job(v)) for v in (0.2, float("inf"), 0.4))
        runner.gate.set()
        assert [j.future.result(5).indices[0] for j in (first, before, after)] == [1, 2, 4]
        error = bad.future.exception(5)
    finally:
        runner.gate.set()
        sched.stop()
    assert runner.batch_sizes == [1, 3]  # the bad frame shared its batch with two good ones
    assert isinstance(error, InternalError)
    assert "NaN or infinite" in error.details and "--precision fp32" in error.details


def test_a_model_whose_scores_overflow_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from edgeinfer.server import WeightsSource, load_model
    from edgeinfer.server.errors import InvalidRequest
    from edgeinfer.server.runtimes import torch as torch_runtime

    class Overflowing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 1000), float("inf"))

    monkeypatch.setattr(torch_runtime, "build_model", lambda spec, weights: Overflowing())
    with pytest.raises(InvalidRequest, match=r"squeezenet1_0 fp32 \(weights random:seed=0\) gives NaN or infinite"):
        load_model("squeezenet", weights=WeightsSource("random", seed=0), batch_sizes=[1], max_batch=1)
