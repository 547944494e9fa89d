"""The KServe v2 service through the real tritonclient.grpc, against the in-process test daemon.

The daemon is conftest's: SqueezeNet 1.0 fp32, seeded random weights, 512 KiB frame limit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

tc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the [dev] extra")
from pathlib import Path  # noqa: E402

from tritonclient.utils import InferenceServerException  # noqa: E402

from edgeinfer.client import EdgeClient  # noqa: E402
from edgeinfer.proto import kserve_v2_pb2 as v2  # noqa: E402
from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc  # noqa: E402
from helpers import jpeg, synthetic_frame  # noqa: E402

MODEL = "squeezenet"
FRAMES = [synthetic_frame(i) for i in (5, 11, 23)]  # BGR, as OpenCV makes them
CORRUPT_JPEG = b"\xff\xd8\xff\xe0 this is not really a jpeg"


@pytest.fixture
def triton(target: str) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(target)
    yield client
    client.close()


@pytest.fixture
def stub(target: str) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def image_input(*jpegs: bytes, shape: list[int] | None = None) -> tc.InferInput:
    data = np.array([[j] for j in jpegs], dtype=np.object_)
    tensor = tc.InferInput("IMAGE", shape or list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data.reshape(tensor.shape()))
    return tensor


def pixel_input(pixels: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels))
    return tensor


BGR = {"pixel_order": "BGR"}  # a request parameter (tritonclient sets no input parameters)


def classes(k: int) -> list[tc.InferRequestedOutput]:
    return [tc.InferRequestedOutput("PROBABILITIES", class_count=k)]


def parse_classification(row: np.ndarray) -> list[tuple[float, int, str]]:
    out = []
    for element in row:
        score, index, label = element.decode().split(":", 2)
        out.append((float(score), int(index), label))
    return out


def status_of(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# -- health, metadata, config --------------------------------------------------


def test_live_ready_and_server_metadata(triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and triton.is_model_ready("squeezenet1_0", "fp32")
    # Versions are precisions: this daemon has no int8 squeezenet, and no vgg16 at all.
    assert not triton.is_model_ready(MODEL, "int8")
    assert not triton.is_model_ready("vgg16")
    meta = triton.get_server_metadata()
    assert meta.name == "edgeinfer"
    assert set(meta.extensions) == {"classification", "model_configuration", "statistics", "parameters"}


def test_the_health_service_reports_the_v2_service_too(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        answer = check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_model_metadata_config_and_index_list_both_inputs(triton: tc.InferenceServerClient) -> None:
    meta = triton.get_model_metadata(MODEL)
    assert (meta.name, list(meta.versions), meta.platform) == ("squeezenet1_0", ["fp32"], "pytorch_libtorch")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("IMAGE", "BYTES", [-1, 1]),
        ("PIXELS", "UINT8", [-1, -1, -1, 3]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("PROBABILITIES", "FP32", [-1, 1000])]

    config = triton.get_model_config(MODEL, "fp32", as_json=True)["config"]
    assert config["name"] == "squeezenet1_0" and config["max_batch_size"] == 16
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("IMAGE", "TYPE_STRING", ["1"], True),
        ("PIXELS", "TYPE_UINT8", ["-1", "-1", "3"], True),
    ]
    assert config["input"][1]["format"] == "FORMAT_NHWC"
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("PROBABILITIES", "TYPE_FP32", ["1000"])
    ]
    assert config["parameters"]["precision"]["string_value"] == "fp32"
    assert config["parameters"]["aliases"]["string_value"] == "squeezenet"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert "1" in [str(n) for n in config["dynamic_batching"]["preferred_batch_size"]]

    index = triton.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("squeezenet1_0", "fp32", "READY")]


# -- inference -----------------------------------------------------------------


def test_jpeg_top_k_is_the_same_through_both_protocols(triton: tc.InferenceServerClient, client: EdgeClient) -> None:
    frame = jpeg(FRAMES[0])
    counted = triton.get_inference_statistics(MODEL).model_stats[0].inference_count
    v1 = client.classify(frame, MODEL, top_k=5)
    # Statistics count the model's frames whichever protocol brought them.
    assert triton.get_inference_statistics(MODEL).model_stats[0].inference_count == counted + 1
    result = triton.infer(MODEL, [image_input(frame)], outputs=classes(5), request_id="frame-0")
    top = parse_classification(result.as_numpy("PROBABILITIES")[0])
    assert [(i, label) for _, i, label in top] == [(c.index, c.label) for c in v1.classes]
    assert [s for s, _, _ in top] == pytest.approx([c.probability for c in v1.classes], abs=1e-6)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("frame-0", "squeezenet1_0", "fp32")
    params = response.parameters
    assert params["precision"].string_param == "fp32" and params["batch_size"].int64_param >= 1
    assert params["total_ms"].double_param >= params["inference_ms"].double_param > 0

    # Without an output asked for: the whole softmax, in class order.
    probs = triton.infer(MODEL, [image_input(frame)]).as_numpy("PROBABILITIES")
    assert probs.shape == (1, 1000) and probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert list(np.argsort(-probs[0])[:5]) == [c.index for c in v1.classes]
    assert probs[0, v1.classes[0].index] == pytest.approx(v1.classes[0].probability, abs=1e-7)


def test_raw_pixels_in_either_order_match_edgeinfer_v1_raw(
    triton: tc.InferenceServerClient, client: EdgeClient
) -> None:
    bgr = FRAMES[1]
    v1 = client.classify(bgr, MODEL, top_k=3, encoding="raw")
    rgb_result = triton.infer(MODEL, [pixel_input(bgr[..., ::-1])], outputs=classes(3))  # RGB: the default
    bgr_result = triton.infer(MODEL, [pixel_input(bgr)], outputs=classes(3), parameters=BGR)
    for result in (rgb_result, bgr_result):
        top = result.as_numpy("PROBABILITIES")
        assert top.shape == (3,)  # [H, W, 3]: one frame, no batch dimension
        assert [(i, label) for _, i, label in parse_classification(top)] == [(c.index, c.label) for c in v1.classes]
    # Read as RGB, the BGR frame is another picture (red and blue swapped): other scores.
    as_bgr = triton.infer(MODEL, [pixel_input(bgr)], parameters=BGR).as_numpy("PROBABILITIES")
    as_rgb = triton.infer(MODEL, [pixel_input(bgr)]).as_numpy("PROBABILITIES")
    assert np.abs(as_bgr - as_rgb).max() > 1e-6


def test_batched_requests_answer_each_frame_like_a_single_one(triton: tc.InferenceServerClient) -> None:
    # A request is one gRPC message: all its frames together fit in --max-frame-bytes (512 KiB here).
    small = [f[:200, :200].copy() for f in FRAMES]
    singles = [triton.infer(MODEL, [pixel_input(f)], parameters=BGR).as_numpy("PROBABILITIES") for f in small]
    before = triton.get_inference_statistics(MODEL).model_stats[0].inference_count

    batch = triton.infer(MODEL, [pixel_input(np.stack(small))], parameters=BGR).as_numpy("PROBABILITIES")
    assert batch.shape == (3, 1000)
    for row, single in zip(batch, singles, strict=True):
        assert int(np.argmax(row)) == int(np.argmax(single))
        np.testing.assert_allclose(row, single, atol=1e-5)  # batched passes may round differently

    jpegs = [jpeg(f) for f in FRAMES]
    top = triton.infer(MODEL, [image_input(*jpegs)], outputs=classes(2)).as_numpy("PROBABILITIES")
    assert top.shape == (3, 2)
    for row, frame in zip(top, jpegs, strict=True):
        alone = triton.infer(MODEL, [image_input(frame)], outputs=classes(2)).as_numpy("PROBABILITIES")[0]
        assert [i for _, i, _ in parse_classification(row)] == [i for _, i, _ in parse_classification(alone)]

    stats = triton.get_inference_statistics(MODEL).model_stats[0]
    assert stats.inference_count >= before + 3 + 3 + 3  # both batches' frames and the three singles after
    assert stats.inference_stats.success.count == stats.inference_count


def test_async_infer(triton: tc.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    frames = [jpeg(f) for f in FRAMES]
    for i, frame in enumerate(frames):
        triton.async_infer(
            MODEL,
            [image_input(frame)],
            callback=lambda result, error: answers.put((result, error)),
            outputs=classes(1),
            request_id=str(i),
        )
    got = {}
    for _ in frames:
        result, error = answers.get(timeout=60)
        assert error is None
        got[result.get_response().id] = parse_classification(result.as_numpy("PROBABILITIES")[0])[0][1]
    assert got == {str(i): top1(triton, f) for i, f in enumerate(frames)}


def test_stream_answers_every_request_once_in_order_with_errors_in_band(triton: tc.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    good = [jpeg(f) for f in FRAMES]
    n = 24
    bad = {5, 17, 23}
    triton.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(n):
            frame = CORRUPT_JPEG if i in bad else good[i % 3]
            triton.async_stream_infer(MODEL, [image_input(frame)], outputs=classes(1), request_id=f"req-{i}")
    finally:
        triton.stop_stream()  # waits for the answers
    got = [answers.get(timeout=1) for _ in range(n)]
    assert answers.empty()  # once each
    for i, (result, error) in enumerate(got):
        if i in bad:
            assert result is None and "could not be decoded" in error.message()
        else:
            assert error is None and result.get_response().id == f"req-{i}"  # in order
    # Each answer is its own frame's: the top class of a single infer of the same JPEG.
    expected = [top1(triton, g) for g in good]
    for i, (result, _) in enumerate(got):
        if result is not None:
            assert parse_classification(result.as_numpy("PROBABILITIES")[0])[0][1] == expected[i % 3]


def top1(triton: tc.InferenceServerClient, frame: bytes) -> int:
    result = triton.infer(MODEL, [image_input(frame)], outputs=classes(1))
    return parse_classification(result.as_numpy("PROBABILITIES")[0])[0][1]


def test_stream_error_answers_carry_the_request_id(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    """Below tritonclient, which drops it: an in-band error names the request it answers."""

    def request(i: int, model: str = MODEL, data: bytes = b"") -> v2.ModelInferRequest:
        r = v2.ModelInferRequest(model_name=model, id=f"r{i}")
        r.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
            data or jpeg(FRAMES[0])
        )
        return r

    requests = [request(0), request(1, model="vgg16"), request(2, data=CORRUPT_JPEG), request(3)]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert [a.infer_response.id for a in answers] == ["r0", "r1", "r2", "r3"]
    assert [bool(a.error_message) for a in answers] == [False, True, True, False]
    assert "vgg16 is not loaded" in answers[1].error_message
    assert answers[0].infer_response.outputs[0].shape == [1, 1000]


def test_typed_contents_work_like_raw_contents(stub: v2_grpc.GRPCInferenceServiceStub) -> None:
    pixels = FRAMES[2][:40, :50]
    raw = v2.ModelInferRequest(model_name=MODEL)
    raw.inputs.add(name="PIXELS", datatype="UINT8", shape=pixels.shape)
    raw.raw_input_contents.append(pixels.tobytes())
    typed = v2.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="PIXELS", datatype="UINT8", shape=pixels.shape).contents.uint_contents.extend(
        pixels.ravel().tolist()
    )
    # The input's own pixel_order wins over the request's.
    for r in (raw, typed):
        r.inputs[0].parameters["pixel_order"].string_param = "BGR"
        r.parameters["pixel_order"].string_param = "RGB"
    rgb = v2.ModelInferRequest(model_name=MODEL)
    rgb.inputs.add(name="PIXELS", datatype="UINT8", shape=pixels.shape)
    rgb.raw_input_contents.append(np.ascontiguousarray(pixels[..., ::-1]).tobytes())
    a, b, c = (stub.ModelInfer(r, timeout=60) for r in (raw, typed, rgb))
    assert a.outputs[0].shape == [1000]
    probs = [np.frombuffer(r.raw_output_contents[0], "<f4") for r in (a, b, c)]
    np.testing.assert_array_equal(probs[0], probs[1])
    np.testing.assert_array_equal(probs[0], probs[2])


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda: ("resnet50", [image_input(jpeg(FRAMES[0]))], None), "NOT_FOUND", "resnet50 is not loaded"),
        (lambda: ("no-such-model", [image_input(jpeg(FRAMES[0]))], None), "NOT_FOUND", "no-such-model"),
        (lambda: (MODEL, [image_input(CORRUPT_JPEG)], None), "INVALID_ARGUMENT", "could not be decoded"),
        (lambda: (MODEL, [image_input(b"GIF89a")], None), "INVALID_ARGUMENT", "JPEG"),
        (lambda: (MODEL, [pixel_input(np.zeros((8, 8, 4), np.uint8))], None), "INVALID_ARGUMENT", "[H, W, 3]"),
        (lambda: (MODEL, [pixel_input(np.zeros((17, 4, 4, 3), np.uint8))], None), "INVALID_ARGUMENT", "max_batch"),
        (lambda: (MODEL, [_fp32_pixels()], None), "INVALID_ARGUMENT", "must be UINT8, got FP32"),
        (lambda: (MODEL, [_named("DATA")], None), "INVALID_ARGUMENT", "unknown input 'DATA'"),
        (lambda: (MODEL, [image_input(jpeg(FRAMES[0])), _named("PIXELS")], None), "INVALID_ARGUMENT", "send one input"),
        (
            lambda: (MODEL, [image_input(jpeg(FRAMES[0]))], [tc.InferRequestedOutput("LOGITS")]),
            "INVALID_ARGUMENT",
            "unknown output 'LOGITS'",
        ),
        (lambda: (MODEL, [image_input(jpeg(FRAMES[0]))], classes(1001)), "INVALID_ARGUMENT", "between 1 and 1000"),
        # Over the daemon's --max-frame-bytes (512 KiB here, gRPC's own limit 64 KiB above it), as in edgeinfer.v1.
        (lambda: (MODEL, [pixel_input(np.zeros((420, 420, 3), np.uint8))], None), "RESOURCE_EXHAUSTED", "limit"),
    ],
)
def test_bad_requests_get_their_status_and_one_line(
    triton: tc.InferenceServerClient, make: object, status: str, words: str
) -> None:
    model, inputs, outputs = make()  # type: ignore[operator]
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(model, inputs, outputs=outputs, client_timeout=60)
    assert status_of(exc) == f"StatusCode.{status}"
    assert words in exc.value.message() and "\n" not in exc.value.message()


def test_pixel_order_is_rgb_or_bgr(triton: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(MODEL, [pixel_input(FRAMES[0])], parameters={"pixel_order": "YUV"})
    assert status_of(exc) == "StatusCode.INVALID_ARGUMENT" and "'RGB' or 'BGR'" in exc.value.message()


def test_unknown_version_is_not_found(triton: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(MODEL, [image_input(jpeg(FRAMES[0]))], model_version="int8")
    assert status_of(exc) == "StatusCode.NOT_FOUND" and "served in fp32, not int8" in exc.value.message()


def test_calls_we_do_not_serve_are_unimplemented_and_say_what_is(triton: tc.InferenceServerClient) -> None:
    for call in (lambda: triton.load_model(MODEL), triton.get_system_shared_memory_status, triton.get_log_settings):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert status_of(exc) == "StatusCode.UNIMPLEMENTED"
        assert "ModelInfer, ModelStreamInfer" in exc.value.message()


def test_v2_streams_count_against_max_streams(daemon: object, target: str) -> None:
    """Each open v2 stream takes a --max-streams slot, as an edgeinfer.v1 stream does."""
    servicer = daemon.servicer  # type: ignore[attr-defined]
    release = threading.Event()

    def requests() -> Iterator[v2.ModelInferRequest]:
        release.wait(30)
        return
        yield  # a generator that sends nothing until released

    with grpc.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        before = servicer.open_streams
        call = stub.ModelStreamInfer(requests(), timeout=30)
        for _ in range(100):
            if servicer.open_streams == before + 1:
                break
            threading.Event().wait(0.05)
        assert servicer.open_streams == before + 1
        release.set()
        assert list(call) == []
    for _ in range(100):
        if servicer.open_streams == before:
            break
        threading.Event().wait(0.05)
    assert servicer.open_streams == before


def test_a_v2_stream_whose_client_walks_away_gives_its_slot_back(daemon: object, target: str) -> None:
    servicer = daemon.servicer  # type: ignore[attr-defined]
    before = servicer.open_streams
    request = v2.ModelInferRequest(model_name=MODEL, id="r")
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(jpeg(FRAMES[0]))
    stop = threading.Event()

    def forever() -> Iterator[v2.ModelInferRequest]:
        while not stop.is_set():
            yield request
            stop.wait(0.05)

    with grpc.insecure_channel(target) as channel:
        call = v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(forever(), timeout=60)
        first = next(call)
        assert first.infer_response.id == "r" and not first.error_message
        call.cancel()
        stop.set()
    for _ in range(200):
        if servicer.open_streams == before:
            break
        threading.Event().wait(0.05)
    assert servicer.open_streams == before


def _fp32_pixels() -> tc.InferInput:
    tensor = tc.InferInput("PIXELS", [4, 4, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((4, 4, 3), np.float32))
    return tensor


def _named(name: str) -> tc.InferInput:
    tensor = tc.InferInput(name, [4, 4, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((4, 4, 3), np.uint8))
    return tensor


def test_unix_socket_precisions_as_versions_and_deadlines() -> None:
    """A daemon of fake models (no torch model): fp32 and int8 of one name are its two versions."""
    import dataclasses
    import tempfile

    from edgeinfer.server import Daemon
    from fakes import SlowRunner, fake_model

    fp32_runner, int8_runner = SlowRunner(), SlowRunner()
    models = [fake_model(fp32_runner), dataclasses.replace(fake_model(int8_runner), precision="int8")]
    with tempfile.TemporaryDirectory(prefix="ek") as tmp:  # a short path: unix socket names are limited
        daemon = Daemon([f"unix:{tmp}/d.sock"]).start()
        for m in models:
            daemon.add_model(m)
        daemon.mark_ready()
        triton = tc.InferenceServerClient(f"unix:{tmp}/d.sock")
        try:
            # Statistics are process-wide, like the Prometheus metrics: other tests' frames count too.
            before = {s.version: s.inference_count for s in triton.get_inference_statistics("squeezenet").model_stats}
            assert list(triton.get_model_metadata("squeezenet").versions) == ["fp32", "int8"]
            index = triton.get_model_repository_index()
            assert [(m.name, m.version) for m in index.models] == [("squeezenet1_0", "fp32"), ("squeezenet1_0", "int8")]
            assert triton.is_model_ready("squeezenet", "int8")
            frame = jpeg(FRAMES[0])
            int8 = triton.infer("squeezenet", [image_input(frame)], model_version="int8", outputs=classes(1))
            assert int8.get_response().model_version == "int8"
            assert (len(int8_runner.batch_sizes), len(fp32_runner.batch_sizes)) == (1, 0)
            default = triton.infer("squeezenet", [image_input(frame)], outputs=classes(1))
            assert default.get_response().model_version == "fp32" and len(fp32_runner.batch_sizes) == 1
            stats = triton.get_inference_statistics("squeezenet").model_stats
            assert [(s.version, s.inference_count - before[s.version]) for s in stats] == [("fp32", 1), ("int8", 1)]

            # A model that does not answer: the call's deadline ends it, and the daemon goes on.
            int8_runner.gate.clear()
            with pytest.raises(InferenceServerException) as exc:
                triton.infer("squeezenet", [image_input(frame)], model_version="int8", client_timeout=0.5)
            assert status_of(exc) == "StatusCode.DEADLINE_EXCEEDED"
            assert triton.is_server_live()
            assert triton.infer("squeezenet", [image_input(frame)], model_version="fp32").as_numpy(
                "PROBABILITIES"
            ).shape == (1, 1000)
        finally:
            int8_runner.gate.set()
            triton.close()
            daemon.stop(grace=1)


def test_frames_of_v2_requests_and_v1_streams_share_the_models_batches() -> None:
    """One v2 request of 2 frames, another v2 client's frame and a v1 stream's frame run as one batch of 4."""
    import torch

    from edgeinfer.server import Daemon
    from edgeinfer.server.runner import BatchOutput
    from fakes import SlowRunner, fake_model

    entered = threading.Event()  # the worker is in a forward pass

    class Runner(SlowRunner):
        def infer(self, batch: torch.Tensor, k: int) -> BatchOutput:
            entered.set()
            return super().infer(batch, k)

    runner = Runner()
    model = fake_model(runner, max_batch=4)
    daemon = Daemon(["127.0.0.1:0"]).start()
    daemon.add_model(model)
    daemon.mark_ready()
    target = f"127.0.0.1:{daemon.port}"
    frame = jpeg(FRAMES[0])
    answers: queue.Queue[tuple[str, object]] = queue.Queue()
    try:
        first = tc.InferenceServerClient(target)
        first.infer(MODEL, [image_input(frame)])  # connected, and the model warm
        runner.batch_sizes.clear()
        entered.clear()
        runner.gate.clear()  # the worker holds the next frame; the rest wait in line
        blocker = threading.Thread(target=lambda: answers.put(("blocker", first.infer(MODEL, [image_input(frame)]))))
        blocker.start()
        assert entered.wait(60)
        second = tc.InferenceServerClient(target)
        pair = threading.Thread(
            target=lambda: answers.put(("pair", second.infer(MODEL, [image_input(frame, frame)], outputs=classes(1))))
        )
        pair.start()
        third = tc.InferenceServerClient(target)
        single = threading.Thread(target=lambda: answers.put(("single", third.infer(MODEL, [image_input(frame)]))))
        single.start()
        with EdgeClient(target, timeout=30) as v1:
            stream = threading.Thread(
                target=lambda: answers.put(("v1", [r.kind for r in v1.stream([frame], MODEL, drop_policy="all")]))
            )
            stream.start()
            deadline = time.monotonic() + 60  # a bound, not a timing: it takes milliseconds on an idle machine
            while model.scheduler.pending() < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert model.scheduler.pending() == 4
            runner.gate.set()
            for t in (blocker, pair, single, stream):
                t.join(60)
        got = dict(answers.get(timeout=1) for _ in range(4))
        assert runner.batch_sizes == [1, 4]
        assert got["v1"] == ["prediction"]
        assert got["pair"].as_numpy("PROBABILITIES").shape == (2, 1)
        assert got["pair"].get_response().parameters["batch_size"].int64_param == 4
        for c in (first, second, third):
            c.close()
    finally:
        runner.gate.set()
        daemon.stop(grace=1)


def test_the_readmes_triton_example_runs_as_written(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Self-contained: it makes its own photo (it opened a cat.jpg that nothing provides)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```python\n", text.index("## From Triton")) + len("```python\n")
    code = text[start : text.index("```\n", start)].replace("localhost:50051", target)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    answers = namespace["r"].as_numpy("PROBABILITIES")  # type: ignore[attr-defined]
    assert answers.size == 5 and capsys.readouterr().out.startswith("[[b'")
    score, index, label = answers.flat[0].decode().split(":", 2)
    assert 0 < float(score) <= 1 and 0 <= int(index) < 1000 and label
