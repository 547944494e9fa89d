"""Shared-memory frames: same answers as inline raw, slots recycled, every misuse gets its status."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest

import edgeinfer.client.streaming as client_streaming
from edgeinfer.client import EdgeClient, Frame
from edgeinfer.client.shm import SharedMemoryFrames
from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.server.errors import NotLocal
from edgeinfer.server.loading import ModelTable
from edgeinfer.server.servicer import EdgeInferenceServicer
from edgeinfer.server.shm import SHM_ROOT, is_local_peer
from fakes import SlowRunner, fake_model
from helpers import MakeDaemon, jpeg, synthetic_frame

FRAMES = [synthetic_frame(i, 96, 128) for i in (1, 2, 3, 4, 5)]


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[SharedMemoryFrames]:
    """Every slot pool the client creates, kept for inspection."""
    made: list[SharedMemoryFrames] = []

    class Recording(SharedMemoryFrames):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(client_streaming, "SharedMemoryFrames", Recording)  # the pool each stream (call) makes
    return made


def _tops(results: list) -> list[int]:
    assert all(r.kind == "prediction" for r in results), [r.kind for r in results]
    return [r.prediction.top1.index for r in results]


def _probabilities(results: list) -> list[tuple[float, ...]]:
    """Top-k probabilities; frames may share a batch differently from run to run (float noise only)."""
    return [tuple(c.probability for c in r.prediction.classes) for r in results]


def test_shared_memory_frames_get_the_answers_of_inline_raw(client: EdgeClient, pools: list) -> None:
    raw = list(client.stream(FRAMES, top_k=5, drop_policy="all", encoding="raw"))
    shm = list(client.stream(FRAMES, top_k=5, drop_policy="all", encoding="shm"))
    assert _tops(shm) == _tops(raw)
    assert np.allclose(_probabilities(shm), _probabilities(raw), rtol=1e-4)
    assert len({p[0] for p in _probabilities(raw)}) == len(FRAMES)  # each frame's own pixels were read
    [pool] = pools
    assert (pool.sent_shared, pool.sent_inline) == (5, 0)
    assert pool.free_slots == pool.slots  # every answer gave its slot back
    assert not (SHM_ROOT / pool.region.key.lstrip("/")).exists()  # unlinked when the stream ended


def test_frames_without_a_free_or_large_enough_slot_go_inline(client: EdgeClient, pools: list) -> None:
    big = synthetic_frame(9, 200, 240)  # larger than the slot sized for the first frame
    frames = [*FRAMES, big, *FRAMES, Frame(np.ascontiguousarray(FRAMES[0][..., ::-1]), bgr=False), jpeg(FRAMES[1])]
    raw = list(client.stream(frames, top_k=3, drop_policy="all", encoding="raw"))
    shm = list(client.stream(frames, top_k=3, drop_policy="all", encoding="shm", shm_slots=1))
    assert [r.sequence for r in shm] == list(range(len(frames)))
    assert _tops(shm) == _tops(raw)
    probabilities = _probabilities(shm)
    assert np.allclose(probabilities, _probabilities(raw), rtol=1e-4)
    assert np.allclose(probabilities[-2], probabilities[0], rtol=1e-4)  # RGB in shared memory reads as its BGR twin
    [pool] = pools
    # One slot, thirteen frames sent back to back: some wait for no slot and go inline, the
    # big one and the JPEG always do; nothing is lost.
    assert pool.sent_shared + pool.sent_inline == len(frames)
    assert pool.sent_shared >= 1 and pool.sent_inline >= 2


def _raw_stream(client: EdgeClient, config: pb.StreamConfig, images: list[pb.Image]) -> list[pb.StreamResponse]:
    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(config=config)
        for i, image in enumerate(images):
            yield pb.StreamRequest(frame=pb.Frame(sequence=i, image=image))

    return list(client._stub.StreamClassify(requests(), timeout=60))


def _config(key: str, byte_size: int) -> pb.StreamConfig:
    return pb.StreamConfig(
        model=pb.ModelSelector(name="squeezenet"),
        top_k=1,
        drop_policy=pb.DROP_POLICY_ALL,
        shared_memory=pb.SharedMemoryRegion(key=key, byte_size=byte_size),
    )


@pytest.mark.parametrize(
    ("key", "byte_size", "code", "text"),
    [
        ("/edgeinfer-test-missing", 1024, grpc.StatusCode.NOT_FOUND, "no shared-memory object"),
        ("/../etc/passwd", 1024, grpc.StatusCode.INVALID_ARGUMENT, "not a POSIX shared-memory name"),
        ("/edgeinfer-test", 0, grpc.StatusCode.INVALID_ARGUMENT, "byte_size must be the size"),
        ("/edgeinfer-test", 1 << 40, grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-shm-bytes"),
    ],
)
def test_bad_regions_end_the_stream_with_a_status(
    client: EdgeClient, key: str, byte_size: int, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _raw_stream(client, _config(key, byte_size), [])
    assert info.value.code() == code and text in info.value.details()


def test_a_region_smaller_than_it_claims_is_refused(client: EdgeClient) -> None:
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(grpc.RpcError) as info:
            _raw_stream(client, _config("/" + shm.name, 1 << 20), [])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 4096 bytes, fewer than shared_memory.byte_size 1048576" in info.value.details()
    finally:
        shm.close()
        shm.unlink()


def test_bad_shared_memory_frames_are_answered_in_place(client: EdgeClient) -> None:
    h, w = FRAMES[0].shape[:2]
    shm = shared_memory.SharedMemory(create=True, size=h * w * 3)
    try:
        np.ndarray((h, w, 3), np.uint8, buffer=shm.buf)[:] = FRAMES[0]
        good = pb.Image(
            shared_memory=pb.SharedMemoryImage(height=h, width=w, pixel_format=pb.PIXEL_FORMAT_BGR),
        )
        past_end = pb.Image(shared_memory=pb.SharedMemoryImage(offset=8, height=h, width=w))
        no_size = pb.Image(shared_memory=pb.SharedMemoryImage(offset=0, height=0, width=w))
        answers = _raw_stream(client, _config("/" + shm.name, h * w * 3), [good, past_end, no_size, good])
    finally:
        shm.close()
        shm.unlink()
    assert [a.WhichOneof("result") for a in answers] == ["prediction", "error", "error", "prediction"]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"ends at byte {8 + h * w * 3}, past the end of region" in answers[1].error.message
    assert "must have a height and a width" in answers[2].error.message
    [inline] = list(client.stream([FRAMES[0]], top_k=1, drop_policy="all", encoding="raw"))
    assert answers[0].prediction.classes[0].index == inline.prediction.classes[0].index


def test_a_region_that_shrinks_while_mapped_is_an_error_not_a_crash(client: EdgeClient) -> None:
    h, w = FRAMES[0].shape[:2]
    shm = shared_memory.SharedMemory(create=True, size=h * w * 3)
    frame = pb.Image(shared_memory=pb.SharedMemoryImage(height=h, width=w, pixel_format=pb.PIXEL_FORMAT_BGR))
    shrunk = threading.Event()

    def requests() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(config=_config("/" + shm.name, h * w * 3))
        yield pb.StreamRequest(frame=pb.Frame(sequence=0, image=frame))
        shrunk.wait(30)
        yield pb.StreamRequest(frame=pb.Frame(sequence=1, image=frame))

    try:
        answers = []
        for answer in client._stub.StreamClassify(requests(), timeout=60):
            answers.append(answer)
            if len(answers) == 1:
                os.truncate(SHM_ROOT / shm.name, 4096)  # what a buggy client might do
                shrunk.set()
    finally:
        shm.close()
        shm.unlink()
    assert [a.WhichOneof("result") for a in answers] == ["prediction", "error"]
    assert "shrank to 4096 bytes while the stream was open" in answers[1].error.message
    assert client.models()  # the daemon is alive


def test_shared_memory_frames_need_a_region(client: EdgeClient) -> None:
    stray = pb.Image(shared_memory=pb.SharedMemoryImage(height=2, width=2))
    config = pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1)
    [answer] = _raw_stream(client, config, [stray])
    assert answer.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "needs a stream opened with StreamConfig.shared_memory" in answer.error.message
    with pytest.raises(grpc.RpcError) as info:
        client._stub.Classify(
            pb.ClassifyRequest(model=pb.ModelSelector(name="squeezenet"), top_k=1, image=stray), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError, match="needs a stream"):
        client.classify(FRAMES[0], encoding="shm")


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("unix:/run/edgeinfer.sock", True),
        ("unix:", True),
        ("ipv4:127.0.0.1:50412", True),
        ("ipv4:127.3.4.5:50412", True),
        ("ipv6:[::1]:50412", True),
        ("ipv6:%5B::1%5D:54142", True),  # grpcio 1.85 percent-encodes the brackets
        ("ipv6:%5B::ffff:127.0.0.1%5D:54142", True),
        ("ipv4:10.0.0.7:50412", False),
        ("ipv6:[2001:db8::7]:50412", False),
        ("ipv6:%5B2001:db8::7%5D:50412", False),
        ("ipv6:%5B::ffff:10.0.0.7%5D:50412", False),
        ("ipv4:128.0.0.1:50412", False),
        ("ipv4:127.0.0.1.evil.example:50412", False),
        ("dns:localhost:50412", False),
        ("", False),
    ],
)
def test_only_same_host_peers_may_use_shared_memory(peer: str, local: bool) -> None:
    assert is_local_peer(peer) is local
    servicer = EdgeInferenceServicer(ModelTable(), max_streams=1)
    config = _config("/edgeinfer-test-missing", 1024)
    if not local:
        with pytest.raises(NotLocal, match="need a client on the daemon's host"):
            servicer._shared_memory(config, peer)


@pytest.mark.parametrize("host", ["[::1]", "localhost"])
def test_shared_memory_over_a_real_loopback_connection(make_daemon: MakeDaemon, host: str, pools: list) -> None:
    """What a user types: the default ``localhost`` (often ::1) and IPv6 loopback, not only 127.0.0.1."""
    daemon = make_daemon(fake_model(SlowRunner()), addresses=(f"{host}:0",))
    with EdgeClient(f"{host}:{daemon.port}", timeout=30) as c:
        results = list(c.stream(FRAMES, top_k=1, drop_policy="all", encoding="shm"))
    assert [r.kind for r in results] == ["prediction"] * len(FRAMES)
    [pool] = pools
    assert (pool.sent_shared, pool.sent_inline) == (len(FRAMES), 0)


def test_a_daemon_can_turn_shared_memory_off() -> None:
    servicer = EdgeInferenceServicer(ModelTable(), max_streams=1, max_shm_bytes=0)
    with pytest.raises(NotLocal, match="--max-shm-bytes 0"):
        servicer._shared_memory(_config("/edgeinfer-test", 1024), "unix:")
