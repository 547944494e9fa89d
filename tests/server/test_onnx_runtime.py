"""Models served by ONNX Runtime: answers, GetModel and KServe metadata naming the runtime, a daemon
that never imports torch, and every artifact or runtime mistake as one line and exit 2 before listening."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeinfer.client import EdgeClient
from edgeinfer.proto import kserve_v2_pb2 as v2
from edgeinfer.proto import kserve_v2_pb2_grpc as v2_grpc
from edgeinfer.server import load_model
from edgeinfer.server.artifacts import SIDECAR, file_sha256
from edgeinfer.server.frames import RawImage
from edgeinfer.server.preprocess_numpy import NumpyPreprocessor
from edgeinfer.server.runtimes.onnx import OnnxRuntime
from helpers import MakeDaemon, jpeg, synthetic_frame

pytestmark = pytest.mark.slow  # the session's ONNX artifact is a torch.export + ONNX export (~20 s)

BLOCKER = Path(__file__).with_name("torch_blocked.py")
ARTIFACT = Path("squeezenet1_0") / "onnx-int8"


def test_onnx_model_answers_what_its_session_computes(onnx_repo: Path, make_daemon: MakeDaemon) -> None:
    model = load_model("squeezenet", precision="int8", repository=onnx_repo, threads=1, batch_sizes=[1], max_batch=1)
    assert (model.runtime, str(model.device), model.precision) == ("onnxruntime", "cpu", "int8")
    assert model.categories[0] == "tench" and model.num_classes == 1000  # labels from the sidecar
    daemon = make_daemon(model)
    frames = [synthetic_frame(i, 320, 240) for i in range(4)]
    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        raw = list(client.stream(frames, "squeezenet", drop_policy="all", encoding="raw", top_k=5, resize="off"))
        info = client.model("squeezenet")
    assert info.runtime == "onnxruntime" and info.precision == "int8"
    # The same frames through the artifact's session and the numpy preprocessing, outside the daemon:
    meta = _sidecar(onnx_repo / ARTIFACT)
    session = OnnxRuntime((onnx_repo / ARTIFACT / "model.onnx").read_bytes(), threads=1)
    pre = NumpyPreprocessor(model.preprocessing)
    for frame, answer in zip(frames, raw, strict=True):
        rgb = np.ascontiguousarray(frame[..., ::-1])
        x = pre(RawImage(rgb.shape[0], rgb.shape[1], rgb.tobytes())).tensor
        expected = session.infer(x[None], 5)
        assert [c.index for c in answer.prediction.classes] == expected.indices[0].tolist()
        assert answer.prediction.classes[0].label == meta["labels"][int(expected.indices[0][0])]
        assert answer.prediction.classes[0].probability == pytest.approx(float(expected.probabilities[0][0]), 1e-5)


def test_kserve_names_the_runtime_and_answers_as_v1_does(onnx_repo: Path, make_daemon: MakeDaemon) -> None:
    model = load_model("squeezenet", precision="int8", repository=onnx_repo, threads=1, warmup=False)
    daemon = make_daemon(model)
    with grpc.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="squeezenet"), timeout=10)
        config = stub.ModelConfig(v2.ModelConfigRequest(name="squeezenet"), timeout=10).config
    assert metadata.platform == "onnxruntime_onnx"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.parameters["runtime"].string_value.startswith("onnxruntime 1.")
    tc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the [dev] extra")
    frame = jpeg(synthetic_frame(7))
    with EdgeClient(f"127.0.0.1:{daemon.port}") as client:
        v1 = client.classify(frame, "squeezenet", top_k=5)
    triton = tc.InferenceServerClient(f"127.0.0.1:{daemon.port}")
    try:
        image = tc.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[frame]], dtype=np.object_))
        probs = triton.infer("squeezenet", [image]).as_numpy("PROBABILITIES")  # the whole softmax
    finally:
        triton.close()
    assert probs.shape == (1, 1000) and probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert list(np.argsort(-probs[0], kind="stable")[:5]) == [c.index for c in v1.classes]


def test_torch_models_say_torch(client: EdgeClient) -> None:
    assert {m.runtime for m in client.models()} == {"torch"}


def _start_blocked(record: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(BLOCKER), str(record), "--port", "0", "--threads", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_daemon_of_onnx_models_never_imports_torch(onnx_repo: Path, tmp_path: Path) -> None:
    record, sock = tmp_path / "imports.txt", tmp_path / "edge.sock"
    proc = _start_blocked(
        record, "--model", "squeezenet:int8", "--repository", str(onnx_repo), "--unix-socket", str(sock)
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "loaded squeezenet1_0 int8 on cpu" in lines[0] and "served by onnxruntime" in lines[0]
        assert "listening on" in lines[1] and "SERVING" in lines[2]
        frames = [synthetic_frame(i) for i in range(3)]
        with EdgeClient(f"unix:{sock}") as client:
            answers = list(client.stream(frames, "squeezenet", drop_policy="all"))
            raw = list(client.stream(frames, "squeezenet", drop_policy="all", encoding="raw"))
            shared = list(client.stream(frames, "squeezenet", drop_policy="all", encoding="shm"))
            assert client.model("squeezenet").runtime == "onnxruntime"
        assert [a.kind for a in answers + raw + shared] == ["prediction"] * 9
        assert [a.prediction.top1.index for a in shared] == [a.prediction.top1.index for a in raw]
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert record.read_text() == ""  # not one attempt to import torch, torchvision or torchao


def _copy(onnx_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(onnx_repo, repo)
    return repo


def _refused(record: Path, *args: str) -> str:
    proc = _start_blocked(record, *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert "listening" not in out and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_an_artifact_changed_after_export_is_refused(onnx_repo: Path, tmp_path: Path) -> None:
    repo = _copy(onnx_repo, tmp_path)
    with open(repo / ARTIFACT / "model.onnx", "ab") as f:
        f.write(b"\0")
    line = _refused(tmp_path / "r", "--model", "squeezenet:int8", "--repository", str(repo))
    assert "squeezenet1_0 int8 on onnxruntime" in line and "does not match the SHA-256" in line and "re-make" in line


def test_an_onnx_file_the_runtime_cannot_load_is_refused(onnx_repo: Path, tmp_path: Path) -> None:
    repo = _copy(onnx_repo, tmp_path)
    model = repo / ARTIFACT / "model.onnx"
    model.write_bytes(b"not a protobuf of an ONNX model")
    meta = _sidecar(model.parent)
    (model.parent / "edgeinfer.json").write_text(json.dumps({**meta, "sha256": file_sha256(model)}))
    line = _refused(tmp_path / "r", "--model", "squeezenet:int8", "--repository", str(repo))
    assert "squeezenet1_0 int8 on onnxruntime: onnxruntime cannot load" in line and "edgequant" in line


def test_a_torch_model_on_a_board_without_torch_is_refused(onnx_repo: Path, tmp_path: Path) -> None:
    line = _refused(tmp_path / "r", "--model", "resnet50", "--weights", "random", "--repository", str(onnx_repo))
    assert "resnet50 fp32" in line and "torch runtime is not installed" in line
    assert "edgequant --model resnet50 --format onnx-fp32" in line and "edgeinfer[server]" in line
    forced = _refused(
        tmp_path / "r", "--model", "squeezenet:int8", "--runtime", "torch", "--repository", str(onnx_repo)
    )
    assert "the torch runtime is not installed" in forced and "--runtime onnxruntime" in forced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "squeezenet:fp32", "--runtime", "onnxruntime"], "no ONNX artifact"),
        (["--model", "squeezenet:fp16", "--runtime", "onnxruntime"], "fp16 is served on CUDA only"),
        (["--model", "squeezenet:int8", "--runtime", "openvino"], "invalid choice: 'openvino'"),
    ],
)
def test_runtime_mistakes_are_one_line(onnx_repo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    line = _refused(tmp_path / "r", *args, "--repository", str(onnx_repo))
    assert message in line


def _sidecar(folder: Path) -> dict:
    return json.loads((folder / SIDECAR).read_text())
