"""Drop policies and ordering, without gRPC: every frame gets exactly one answer, in order."""

from __future__ import annotations

import threading

import pytest

from edgeinfer.server.errors import InvalidFrame, InvalidRequest
from edgeinfer.server.options import PreprocessOn
from edgeinfer.server.preprocess import JpegImage
from edgeinfer.server.session import DropPolicy, FrameIn, StreamSession
from fakes import SlowRunner, fake_model, wait_until_taken
from helpers import jpeg, synthetic_frame

FRAME = JpegImage(jpeg(synthetic_frame(0, 64, 48)))


def _run(session: StreamSession, frames: list[FrameIn]) -> list:
    def feed() -> None:
        for f in frames:
            session.submit(f)
        session.finish()

    feeder = threading.Thread(target=feed)
    feeder.start()
    out = list(session.results())
    feeder.join(5)
    return out


PLACES = pytest.mark.parametrize("preprocess_on", [PreprocessOn.STREAM, PreprocessOn.INFERENCE])


@PLACES
def test_latest_drops_stale_frames_but_answers_each_in_order(preprocess_on: str) -> None:
    runner = SlowRunner()
    runner.gate.clear()  # the model is busy with frame 0 while frames 1..19 arrive
    model = fake_model(runner, preprocess_on=preprocess_on)
    try:
        session = StreamSession(model, top_k=3, policy=DropPolicy.LATEST)
        session.submit(FrameIn(0, 1000, FRAME))
        wait_until_taken(model.scheduler)  # the worker has taken frame 0 and waits at the gate
        for i in range(1, 20):
            session.submit(FrameIn(i, 1000 + i, FRAME))
        runner.gate.set()
        session.finish()
        out = list(session.results())
    finally:
        model.stop()
    assert [o.sequence for o in out] == list(range(20))
    assert [o.capture_time_ns for o in out] == [1000 + i for i in range(20)]
    # Each newer frame replaced the waiting one: only the first and the newest ran.
    assert [o.sequence for o in out if o.result] == [0, 19]
    assert all(o.dropped and "newer frame" in o.dropped for o in out[1:19])
    assert all(len(o.result.indices) == 3 for o in (out[0], out[19]))
    assert runner.batch_sizes == [1, 1]
    assert session.counts == {"predicted": 2, "dropped": 18, "error": 0}


@PLACES
def test_all_policy_infers_every_frame(preprocess_on: str) -> None:
    runner = SlowRunner(delay_s=0.01)
    model = fake_model(runner, preprocess_on=preprocess_on)
    try:
        out = _run(StreamSession(model, top_k=1, policy=DropPolicy.ALL), [FrameIn(i, 0, FRAME) for i in range(30)])
    finally:
        model.stop()
    assert [o.sequence for o in out] == list(range(30))
    assert all(o.result and not o.dropped and o.error is None for o in out)
    assert sum(runner.batch_sizes) == 30
    # An outcome keeps the model's result; its labels and batch size are read from it.
    first = out[0]
    assert first.labels[first.result.indices[0]] == model.categories[first.result.indices[0]]
    assert first.total_ms >= first.result.inference_ms > 0
    assert first.batch_size == first.result.batch_size >= 1
    assert "labels" not in repr(first)  # not the model's 1000 class names in a log line


@PLACES
def test_bad_frames_are_answered_in_place(preprocess_on: str) -> None:
    model = fake_model(SlowRunner(), preprocess_on=preprocess_on)
    frames = [
        FrameIn(0, 0, FRAME),
        FrameIn(1, 0, JpegImage(b"\xff\xd8broken")),
        FrameIn(2, 0, InvalidFrame("frame has no image")),
        FrameIn(3, 0, FRAME),
    ]
    try:
        out = _run(StreamSession(model, top_k=1, policy=DropPolicy.ALL), frames)
    finally:
        model.stop()
    assert [o.sequence for o in out] == [0, 1, 2, 3]
    assert out[0].result and out[3].result
    assert out[1].error is not None and "could not be decoded" in out[1].error.details
    assert out[1].error.status_code.name == "INVALID_ARGUMENT"
    assert out[2].error is not None and "no image" in out[2].error.details


def test_on_the_worker_a_dropped_frame_is_never_decoded() -> None:
    runner = SlowRunner()
    runner.gate.clear()
    model = fake_model(runner, preprocess_on=PreprocessOn.INFERENCE)
    decoded: list[int] = []
    decode = model.preprocessor.decode
    model.preprocessor.decode = lambda image: decoded.append(1) or decode(image)  # type: ignore[method-assign]
    try:
        session = StreamSession(model, top_k=1, policy=DropPolicy.LATEST)
        session.submit(FrameIn(0, 0, FRAME))
        wait_until_taken(model.scheduler)
        for i in range(1, 10):
            session.submit(FrameIn(i, 0, FRAME))
        assert len(decoded) == 1  # only the running frame; 1..9 wait undecoded
        runner.gate.set()
        session.finish()
        out = list(session.results())
    finally:
        model.stop()
    assert [o.kind for o in out] == ["predicted"] + ["dropped"] * 8 + ["predicted"]
    assert len(decoded) == 2  # frames 1..8 were replaced before anyone decoded them


def test_stream_level_failure_comes_after_earlier_answers() -> None:
    model = fake_model(SlowRunner())
    try:
        session = StreamSession(model, top_k=1, policy=DropPolicy.ALL)
        session.submit(FrameIn(0, 0, FRAME))
        session.fail(InvalidRequest("second config"))
        results = session.results()
        assert next(results).sequence == 0
        with pytest.raises(InvalidRequest):
            next(results)
    finally:
        model.stop()


def test_abort_unblocks_a_reader_stuck_on_a_full_window() -> None:
    runner = SlowRunner()
    runner.gate.clear()
    model = fake_model(runner)
    session = StreamSession(model, top_k=1, policy=DropPolicy.ALL)
    submitted: list[bool] = []

    def feed() -> None:
        for i in range(50):  # far more than the window of 8
            if not session.submit(FrameIn(i, 0, FRAME)):
                submitted.append(False)
                return
            submitted.append(True)

    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join(0.5)
    assert feeder.is_alive() and len(submitted) == 8  # back-pressure: blocked on the window
    session.abort()
    feeder.join(5)
    runner.gate.set()
    assert list(session.results()) == []  # the handler side ends too, nothing left hanging
    model.stop()
    assert not feeder.is_alive() and submitted[-1] is False


def test_abort_wakes_a_handler_waiting_on_a_model_that_never_answers() -> None:
    """The peer leaves while its frame is in a stuck forward pass: the handler must not wait forever."""
    runner = SlowRunner()
    runner.gate.clear()  # the forward pass never ends until the test opens the gate
    model = fake_model(runner)
    session = StreamSession(model, top_k=1, policy=DropPolicy.ALL)
    answers: list = []
    handler = threading.Thread(target=lambda: answers.extend(session.results()))
    try:
        for i in range(3):
            assert session.submit(FrameIn(i, 0, FRAME))
        handler.start()
        handler.join(0.3)
        assert handler.is_alive()  # waiting on frame 0, in the model
        session.abort()
        handler.join(5)
        assert not handler.is_alive() and answers == []  # ended; nothing sent to a peer that left
    finally:
        runner.gate.set()
        model.stop()


@pytest.mark.parametrize("k", [0, 1001])
def test_top_k_bounds(k: int) -> None:
    model = fake_model(SlowRunner())
    try:
        with pytest.raises(InvalidRequest, match="top_k must be between 1 and 1000"):
            StreamSession(model, top_k=k)
    finally:
        model.stop()


def test_a_failing_model_answers_internal_and_the_stream_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(SlowRunner):
        calls = 0

        def infer(self, batch, k):  # type: ignore[no-untyped-def]
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("out of memory")
            return super().infer(batch, k)

    model = fake_model(Flaky())
    try:
        out = _run(StreamSession(model, top_k=1, policy=DropPolicy.ALL), [FrameIn(i, 0, FRAME) for i in range(3)])
    finally:
        model.stop()
    assert [o.sequence for o in out] == [0, 1, 2]
    assert out[0].result and out[2].result
    assert out[1].error is not None and out[1].error.status_code.name == "INTERNAL"
    assert "out of memory" in out[1].error.details
    logged = [r for r in caplog.records if r.exc_info and "out of memory" in str(r.exc_info[1])]
    assert len(logged) == 1  # once, by the batcher, with its traceback


def test_a_model_output_that_does_not_fit_the_batch_answers_every_frame(caplog: pytest.LogCaptureFixture) -> None:
    """A bug after the forward pass (reading its output) still answers each frame of the batch."""

    class Short(SlowRunner):
        def infer(self, batch, k):  # type: ignore[no-untyped-def]
            out = super().infer(batch, k)
            return type(out)(out.probabilities[:0], out.indices[:0], out.inference_ms)  # no rows

    model = fake_model(Short())
    try:
        out = _run(StreamSession(model, top_k=2, policy=DropPolicy.ALL), [FrameIn(i, 0, FRAME) for i in range(2)])
    finally:
        model.stop()
    assert [o.sequence for o in out] == [0, 1]
    assert all(o.error is not None and o.error.status_code.name == "INTERNAL" for o in out)
    assert "the model answered 0 rows for a batch of 1" in out[0].error.details
    assert sum(1 for r in caplog.records if r.exc_info) == 2  # each batch of one logged once


def test_an_aborted_session_lets_go_of_the_frame_still_waiting() -> None:
    """gRPC keeps an ended call's callbacks (session.abort among them) for a while: the session
    they keep alive must not keep the frame that was waiting for the model, up to a whole raw frame."""
    import gc
    import weakref

    runner = SlowRunner()
    runner.gate.clear()  # frame 0 sits in the model; frame 1 waits in line
    model = fake_model(runner, preprocess_on=PreprocessOn.INFERENCE)
    try:
        session = StreamSession(model, top_k=1, policy=DropPolicy.LATEST)
        session.submit(FrameIn(0, 0, FRAME))
        wait_until_taken(model.scheduler)
        waiting = JpegImage(jpeg(synthetic_frame(1, 64, 48)))
        session.submit(FrameIn(1, 0, waiting))
        image = weakref.ref(waiting)
        del waiting
        session.abort()
        gc.collect()
        assert image() is None  # the session lives on; the waiting frame's image does not
        assert model.scheduler.pending() == 0
    finally:
        runner.gate.set()
        model.stop()
