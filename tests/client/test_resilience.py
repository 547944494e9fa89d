"""A robot's stream outlives its daemon: restarts mid-stream, a daemon that is not there, cameras that drop out."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.client import EdgeClient, EdgeInferError, FrameResult, paced
from edgeinfer.media import sources as media_sources
from helpers import synthetic_frame

MODEL = "squeezenet1_1"  # the cheapest seed model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(port: int) -> object:
    """A daemon on a fixed port, as a restarted edgeserver would come back."""
    from edgeinfer.server import Daemon, WeightsSource, load_model

    d = Daemon([f"127.0.0.1:{port}"], max_streams=4).start()
    assert d.port == port
    d.add_model(load_model(MODEL, weights=WeightsSource("random", seed=0), max_batch=1))
    d.mark_ready()
    return d


@pytest.fixture
def port() -> int:
    return free_port()


def _check_every_frame_once(results: list[FrameResult], n: int) -> None:
    assert [r.sequence for r in results] == list(range(n))  # each exactly once, in order


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_a_daemon_restarted_mid_stream_loses_no_frame(port: int, policy: str) -> None:
    n, restart_at, resume_at = 30, 8, 14
    daemon = start_daemon(port)
    restarted = threading.Event()
    frames = [synthetic_frame(i) for i in range(n)]

    def camera() -> Iterator[np.ndarray]:
        """25 fps; a burst after frame ``restart_at``, so that frames are in flight when the daemon goes
        (however fast the model); from ``resume_at`` on, frames wait for the new daemon (however slow its start)."""
        yield from paced(frames[: restart_at + 1], 25)
        yield from frames[restart_at + 1 : resume_at]
        restarted.wait(60)
        yield from paced(frames[resume_at:], 25)

    statuses: list[str] = []
    results: list[FrameResult] = []
    try:
        with EdgeClient(f"127.0.0.1:{port}") as client:
            stream = client.stream(camera(), MODEL, drop_policy=policy, on_status=statuses.append)
            for r in stream:
                results.append(r)
                if r.sequence == restart_at:
                    daemon.stop(0)  # type: ignore[attr-defined]
                    daemon = start_daemon(port)  # the same port, as edgeserver restarted by systemd
                    restarted.set()
        assert [r.sequence for r in results] == list(range(n))  # each frame answered exactly once, in order
        assert stream.reconnects == 1
        kinds = [r.kind for r in results]
        assert set(kinds) <= {"prediction", "dropped"}
        assert kinds[0] == "prediction"  # (with "latest" the daemon drops stale ones of the burst itself)
        lost = [r for r in results if r.dropped and "reconnect" in r.dropped]
        assert lost and all(r.sequence > restart_at for r in lost)
        assert "the connection to the daemon was lost (UNAVAILABLE); reconnecting" in {r.dropped for r in lost}
        after = [r for r in results[resume_at:] if r.prediction]
        assert after and results[-1].prediction is not None  # the stream went on with the new daemon
        assert after[-1].prediction.model == MODEL  # type: ignore[union-attr]
        assert statuses[0].startswith(f"connection to 127.0.0.1:{port} lost (UNAVAILABLE")
        assert statuses[-1].startswith(f"reconnected to 127.0.0.1:{port} after")
    finally:
        restarted.set()
        daemon.stop(0)  # type: ignore[attr-defined]


def test_a_daemon_draining_on_sigterm_answers_what_it_read_and_the_stream_moves_on(port: int) -> None:
    """A graceful restart (systemd's SIGTERM: Daemon.stop(grace)) mid-stream, not a crash: the frames the old daemon
    read are answered by it, its UNAVAILABLE "shutting down" makes the client reconnect, and no frame is lost."""
    n, drain_at, resume_at = 30, 8, 14
    daemon = start_daemon(port)
    restarted = threading.Event()
    frames = [synthetic_frame(i) for i in range(n)]

    def camera() -> Iterator[np.ndarray]:
        yield from paced(frames[: drain_at + 1], 25)
        yield from frames[drain_at + 1 : resume_at]  # a burst: frames in flight as the drain begins
        restarted.wait(60)
        yield from paced(frames[resume_at:], 25)

    def restart() -> None:
        nonlocal daemon
        daemon.stop(grace=10)  # type: ignore[attr-defined]
        daemon = start_daemon(port)
        restarted.set()

    statuses: list[str] = []
    results: list[FrameResult] = []
    restarter = threading.Thread(target=restart)
    try:
        with EdgeClient(f"127.0.0.1:{port}") as client:
            stream = client.stream(camera(), MODEL, drop_policy="all", on_status=statuses.append)
            for r in stream:
                results.append(r)
                if r.sequence == drain_at:
                    restarter.start()
        _check_every_frame_once(results, n)
        assert stream.reconnects == 1
        assert statuses[0].startswith(f"connection to 127.0.0.1:{port} lost (UNAVAILABLE: the daemon is shutting down")
        lost = [r for r in results if r.kind != "prediction"]
        # Every frame is a prediction, but those the old daemon had not read when it drained: dropped, saying why.
        assert all(r.dropped and "reconnect" in r.dropped and drain_at < r.sequence < resume_at for r in lost)
        assert all(r.prediction is not None for r in results[resume_at:])  # the new daemon answers the rest
    finally:
        restarted.set()
        if restarter.is_alive():
            restarter.join(30)
        daemon.stop(0)  # type: ignore[attr-defined]


def test_reconnect_false_fails_fast(port: int) -> None:
    daemon = start_daemon(port)
    seen = []
    with EdgeClient(f"127.0.0.1:{port}") as client, pytest.raises(EdgeInferError) as failed:
        for r in client.stream(paced([synthetic_frame(i) for i in range(30)], 25), MODEL, reconnect=False):
            seen.append(r.sequence)
            if r.sequence == 3:
                daemon.stop(0)  # type: ignore[attr-defined]
    assert failed.value.code.name == "UNAVAILABLE"
    assert seen[:4] == [0, 1, 2, 3] and len(seen) < 30


def _camera(frames: int = 600, fps: float = 20) -> Iterator[np.ndarray]:
    """A camera that goes on (30 s at most), one frame reused."""
    frame = synthetic_frame(0)
    return paced((frame for _ in range(frames)), fps)


def test_a_daemon_that_never_comes_says_so_and_gives_up(port: int) -> None:
    statuses: list[str] = []
    results: list[FrameResult] = []
    with EdgeClient(f"127.0.0.1:{port}", timeout=30) as client, pytest.raises(EdgeInferError) as failed:
        for r in client.stream(_camera(), MODEL, drop_policy="latest", max_outage=2.0, on_status=statuses.append):
            results.append(r)
    assert failed.value.code.name == "UNAVAILABLE" and "unreachable for 2 s; gave up" in failed.value.details
    assert statuses and statuses[0].startswith(f"waiting for 127.0.0.1:{port} ...")
    # A camera does not wait for the daemon: what it captured meanwhile is answered, as dropped.
    assert results and [r.sequence for r in results] == list(range(len(results))) and len(results) < 600
    assert all(r.dropped and "unreachable" in r.dropped and "reconnecting" in r.dropped for r in results)


def test_the_clients_timeout_bounds_the_wait_for_a_daemon_never_reached(port: int) -> None:
    """EdgeClient(timeout=1).stream(...) with no daemon: the client's timeout, not the 60 s max_outage."""
    with EdgeClient(f"127.0.0.1:{port}", timeout=1) as client, pytest.raises(EdgeInferError) as failed:
        for _ in client.stream(_camera(), MODEL, drop_policy="latest"):
            pass
    assert failed.value.code.name == "UNAVAILABLE" and "unreachable for 1 s; gave up" in failed.value.details
    assert str(failed.value) == f"UNAVAILABLE: {failed.value.details}"  # no gRPC text in it


def test_a_source_that_ends_during_an_outage_ends_the_wait(port: int) -> None:
    """The daemon lost, the clip over: nothing is left to send, so the 60 s outage limit is not waited out."""
    results: list[FrameResult] = []
    with EdgeClient(f"127.0.0.1:{port}", timeout=60) as client, pytest.raises(EdgeInferError) as failed:
        for r in client.stream(_camera(frames=10), MODEL, drop_policy="latest", max_outage=60):
            results.append(r)
    assert failed.value.code.name == "UNAVAILABLE" and "until the source ended; gave up" in failed.value.details
    assert [r.sequence for r in results] == list(range(10)) and all(r.dropped for r in results)


def test_str_of_an_error_is_what_a_person_reads() -> None:
    import grpc

    raw = (
        "connections to all backends failing; last error: UNKNOWN: ipv6:%5B::1%5D:50051: "
        "Failed to connect to remote host: Connection refused"
    )
    error = EdgeInferError(grpc.StatusCode.UNAVAILABLE, raw)
    assert str(error) == error.reason == "UNAVAILABLE: connection refused by [::1]:50051"
    assert error.details == raw  # kept for whoever needs gRPC's own words


def test_edgeclient_rides_through_a_restart_and_counts_it(port: int, tmp_path: Path) -> None:
    from helpers import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=45, fps=15)
    daemon = start_daemon(port)
    exe = str(Path(sys.executable).with_name("edgeclient"))
    proc = subprocess.Popen(
        # all: the video waits for the daemon (latest would drop what plays during the outage)
        [
            exe,
            "--server",
            f"127.0.0.1:{port}",
            "--model",
            MODEL,
            "--video",
            str(clip),
            "--json",
            "--drop-policy",
            "all",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(5)]
        daemon.stop(0)  # type: ignore[attr-defined]
        daemon = start_daemon(port)
        rest = [json.loads(line) for line in proc.stdout]
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.wait(60) == 0, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        daemon.stop(0)  # type: ignore[attr-defined]
    records = first + rest
    assert [r["sequence"] for r in records] == list(range(45))
    # Frames in flight when the daemon went (none, if it went between two frames) are dropped, saying why;
    # with policy all the daemon itself drops nothing.
    assert all("reconnect" in r["reason"] for r in records if r["kind"] == "dropped")
    assert records[-1]["kind"] == "prediction" and records[4]["kind"] == "prediction"
    assert f"connection to 127.0.0.1:{port} lost" in err and "reconnected" in err
    assert "reconnects 1," in err and "sent 45, answered 45" in err
    assert "Traceback" not in err and "GOAWAY" not in err  # gRPC's own log lines stay quiet


def test_edgeclient_says_at_once_that_it_waits_and_prints_no_summary(port: int, clip: Path) -> None:
    exe = str(Path(sys.executable).with_name("edgeclient"))
    out = subprocess.run(
        [exe, "--server", f"127.0.0.1:{port}", "--video", str(clip), "--wait", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stderr.splitlines()
    assert out.returncode == 1
    assert lines[0].startswith(f"edgeclient: waiting for 127.0.0.1:{port} ...")
    assert lines[0].endswith(f"(UNAVAILABLE: connection refused by 127.0.0.1:{port})"), lines[0]  # not gRPC's raw text
    assert lines[-1].startswith("edgeclient: UNAVAILABLE: the daemon at") and "not ready within 1 s" in lines[-1]
    assert "summary:" not in out.stdout + out.stderr  # nothing was sent


class FakeCapture:
    """A VideoCapture whose device delivers the frames scripted for each opening, then fails."""

    script: list[int] = []  # frames per opening; 0: the opening fails
    opened = 0

    def __init__(self, target: object) -> None:
        FakeCapture.opened += 1
        self.left = FakeCapture.script.pop(0) if FakeCapture.script else 0
        self.ok = self.left > 0

    def isOpened(self) -> bool:
        return self.ok

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


class FakeCv2:
    VideoCapture = FakeCapture
    CAP_PROP_FPS = 5


@pytest.fixture
def fake_camera(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeCapture]]:
    monkeypatch.setattr(media_sources, "require_cv2", lambda: FakeCv2)
    monkeypatch.setattr(media_sources, "REOPEN_BACKOFF_S", (0.01, 0.04))
    FakeCapture.opened = 0
    yield FakeCapture


def test_a_camera_that_stops_is_reopened_with_backoff_and_gaps_are_counted(fake_camera: type[FakeCapture]) -> None:
    fake_camera.script = [3, 0, 0, 2, 4]  # 3 frames; two failed reopenings; 2 frames; 4 frames; then nothing
    gaps: list[str] = []
    frames: list[np.ndarray] = []
    with pytest.raises(media_sources.SourceError, match=r"camera 0 delivered no frame for 0\.5 s"):
        for f in media_sources.capture_frames(0, on_gap=gaps.append, give_up_after=0.5):
            frames.append(f)
    assert len(frames) == 9
    assert gaps == ["camera 0 stopped delivering frames; reopening it"] * 3
    assert fake_camera.opened >= 6  # the first opening, two failures, two successes, and tries after the last gap


def test_a_camera_that_cannot_be_opened_fails_at_once(fake_camera: type[FakeCapture]) -> None:
    fake_camera.script = [0]
    with pytest.raises(media_sources.SourceError, match="OpenCV cannot open camera 0"):
        next(media_sources.capture_frames(0))
    assert fake_camera.opened == 1


def test_a_video_file_ends_without_reopening(fake_camera: type[FakeCapture], clip: Path) -> None:
    fake_camera.script = [5, 5]
    gaps: list[str] = []
    assert len(list(media_sources.capture_frames(clip, fps=0, on_gap=gaps.append))) == 5
    assert gaps == [] and fake_camera.opened == 1


def test_the_client_raises_a_source_error_of_its_own_family(tmp_path: Path) -> None:
    from edgeinfer.client import SourceError, capture_frames, image_files

    for source in (lambda: capture_frames(tmp_path / "missing.mp4"), lambda: image_files(tmp_path / "none")):
        with pytest.raises(EdgeInferError) as failed:
            next(iter(source()))
        assert isinstance(failed.value, SourceError) and isinstance(failed.value, media_sources.SourceError)
        assert "does not exist" in str(failed.value) and failed.value.code.name == "FAILED_PRECONDITION"


def test_leaving_a_stream_early_releases_its_source(client: EdgeClient) -> None:
    closed = threading.Event()

    def camera() -> Iterator[np.ndarray]:
        try:
            i = 0
            while True:  # a camera never ends by itself
                yield synthetic_frame(i % 5)
                i += 1
        finally:
            closed.set()  # as capture_frames releases its VideoCapture

    with client.stream(camera(), "squeezenet") as stream:
        first = next(stream)
    assert first.sequence == 0
    assert closed.wait(10)
