from __future__ import annotations

import torch

from edgeinfer.server.batcher import BatchScheduler, Job
from fakes import SlowRunner, wait_until_taken


def _job(value: float, k: int = 3) -> Job:
    return Job(torch.full((3, 8, 8), value), k)


def test_waiting_jobs_from_many_streams_run_as_one_batch() -> None:
    runner = SlowRunner()
    runner.gate.clear()  # hold the worker on its first batch
    sched = BatchScheduler(runner, max_batch=4)
    try:
        first = sched.submit(_job(0.1))
        wait_until_taken(sched)  # the worker took the first job and waits at the gate
        rest = [sched.submit(_job(0.1 * i)) for i in range(2, 8)]
        runner.gate.set()
        results = [j.future.result(5) for j in [first, *rest]]
    finally:
        sched.stop()
    assert runner.batch_sizes == [1, 4, 2]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]
    # Each job gets its own row back: class = round(value * 10).
    assert [r.indices[0] for r in results] == [1, 2, 3, 4, 5, 6, 7]


def test_each_job_gets_its_own_top_k() -> None:
    runner = SlowRunner()
    runner.gate.clear()
    sched = BatchScheduler(runner, max_batch=8)
    try:
        blocker = sched.submit(_job(0.0))
        wait_until_taken(sched)
        small, big = sched.submit(_job(0.2, k=1)), sched.submit(_job(0.2, k=5))
        runner.gate.set()
        blocker.future.result(5)
        assert len(small.future.result(5).indices) == 1
        assert len(big.future.result(5).indices) == 5
    finally:
        sched.stop()


def test_cancel_only_before_start() -> None:
    runner = SlowRunner()
    runner.gate.clear()
    sched = BatchScheduler(runner, max_batch=1)
    try:
        running = sched.submit(_job(0.1))
        wait_until_taken(sched)
        waiting = sched.submit(_job(0.2))
        assert sched.cancel(waiting) is True
        assert sched.cancel(running) is False
        runner.gate.set()
        assert running.future.result(5).indices[0] == 1
        assert not waiting.future.done() and sched.pending() == 0
    finally:
        sched.stop()


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
        assert isinstance(bad.future.exception(5), RuntimeError)
        assert sched.submit(_job(0.3)).future.result(5).indices[0] == 3
    finally:
        sched.stop()
