"""`edgeserver`'s argument and sidecar mistakes: one line, exit 2, before torch is imported (issues 25, 26),
and `edgeserver` / `edgequant` in a client-only install naming the extra to install."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeinfer.server.startup_checks import SIDECAR, SidecarError, read_checked_sidecar

GOOD_SIDECAR = {
    "format_version": 1,
    "model": "squeezenet1_0",
    "flow": "fx",
    "engine": "x86",
    "torch": "2.14.1",
    "file": "model.pt",
    "sha256": "0" * 64,
    "weights": "random:seed=0",
    "preprocessing": {"resize_size": 256, "crop_size": 224, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]},
}


def _run_main(argv: list[str]) -> tuple[int, list[str], str, bool]:
    """edgeserver's main in a fresh interpreter: (exit status, stderr lines, stdout, whether torch got imported)."""
    code = (
        "import sys, json\nfrom edgeinfer.server.cli import main\n"
        f"try:\n    status = main({argv!r})\nexcept SystemExit as exc:\n    status = exc.code\n"
        "print(json.dumps([status, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    status, torch_loaded = json.loads(out.stdout.splitlines()[-1])
    return status, out.stderr.splitlines(), out.stdout, torch_loaded


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def _repo(tmp_path: Path, sidecar: str | None) -> Path:
    folder = tmp_path / "repo" / "squeezenet1_0" / "int8-x86"
    folder.mkdir(parents=True)
    if sidecar is not None:
        (folder / SIDECAR).write_text(sidecar)
    return tmp_path / "repo"


def _without(key: str) -> str:
    return json.dumps({k: v for k, v in GOOD_SIDECAR.items() if k != key})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "alexnet"], "argument --model: unknown model 'alexnet'; known models: inception_v3"),
        (["--model", "squeezenet:int4"], "unknown precision 'int4' in squeezenet:int4; use auto/fp32/fp16/int8"),
        (["--model", "squeezenet", "--device", "tpu"], "argument --device: 'tpu' is not a device this daemon serves"),
        (["--model", "squeezenet", "--precision", "fp16"], "fp16 is served on CUDA only"),
        (["--model", "squeezenet:int8", "--device", "cuda"], "int8 runs on the CPU only"),
        (["--model", "squeezenet", "--weights", "/nonexistent.pth"], "weights file /nonexistent.pth does not exist"),
        (["--model", "squeezenet", "--cuda-graphs"], "it needs --device cuda, not cpu"),
        (["--model", "squeezenet", "--port", "52701", "--metrics-port", "52701"], "52701 is also --port"),
        (
            ["--model", "squeezenet", "--metrics-port", "52702", "--health-port", "52702"],
            "52702 is also --metrics-port",
        ),
        (["--model", "squeezenet", "--unix-socket", "/nonexistent-dir/edge.sock"], "folder /nonexistent-dir does not"),
    ],
)
def test_argument_mistakes_are_one_line_before_torch(args: list[str], message: str) -> None:
    status, err, out, torch_loaded = _run_main(["--weights", "random", "--port", "0", *args])
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("edgeserver: error: ") and message in err[0], err[0]
    assert "listening" not in out and not torch_loaded


def test_busy_ports_are_one_line_before_torch(busy_port: int) -> None:
    base = ["--model", "squeezenet", "--weights", "random"]
    status, err, _, torch_loaded = _run_main([*base, "--host", "127.0.0.1", "--port", str(busy_port)])
    assert (status, len(err), torch_loaded) == (2, 1, False), err
    assert f"port {busy_port} is in use" in err[0] and "--port 0 for a free one" in err[0]
    status, err, _, torch_loaded = _run_main([*base, "--port", "0", "--metrics-port", str(busy_port)])
    assert (status, len(err), torch_loaded) == (2, 1, False), err
    assert f"argument --metrics-port: cannot listen on 127.0.0.1:{busy_port}: port {busy_port} is in use" in err[0]
    assert "pick another --metrics-port" in err[0]


def test_unix_socket_paths_that_cannot_work(tmp_path: Path) -> None:
    base = ["--model", "squeezenet", "--weights", "random", "--port", "0", "--unix-socket"]
    (tmp_path / "file").write_text("not a socket")
    status, err, _, _ = _run_main([*base, str(tmp_path / "file")])
    assert status == 2 and err == [
        f"edgeserver: error: argument --unix-socket: {tmp_path / 'file'} exists and is "
        "not a socket; name a new path (see edgeserver --help)"
    ]
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(live))
        listener.listen()
        status, err, _, _ = _run_main([*base, str(live)])
    assert status == 2 and len(err) == 1 and f"{live} is in use: another process listens on it" in err[0]
    # the listener is gone: its socket file is stale, and grpc replaces a stale one
    from edgeinfer.server.startup_checks import unix_socket_problem

    assert unix_socket_problem(live) is None
    assert "bytes long" in (unix_socket_problem(tmp_path / ("s" * 120)) or "")


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        (None, "no int8 artifact for squeezenet1_0: looked for"),
        ("{not json", "is not JSON (line 1: Expecting property name"),
        ("[1, 2]", "holds JSON list, not the sidecar's object"),
        (_without("flow"), "lacks 'flow'"),
        (_without("preprocessing"), "lacks 'preprocessing'"),
        (json.dumps({**GOOD_SIDECAR, "preprocessing": {"crop_size": 224}}), "lacks 'preprocessing.resize_size'"),
        (json.dumps({**GOOD_SIDECAR, "engine": 5}), "lacks 'engine' as str"),
        (json.dumps({**GOOD_SIDECAR, "flow": "onnx-qdq"}), "names flow 'onnx-qdq', which this daemon does not load"),
    ],
)
def test_sidecar_mistakes_are_one_line_before_torch(tmp_path: Path, sidecar: str | None, message: str) -> None:
    repo = _repo(tmp_path, sidecar)
    status, err, out, torch_loaded = _run_main(["--model", "squeezenet:int8", "--repository", str(repo), "--port", "0"])
    assert status == 2 and len(err) == 1, err
    assert message in err[0] and "edgequant --model squeezenet1_0 --calib PATH --out" in err[0], err[0]
    assert "listening" not in out and not torch_loaded


def test_a_good_sidecar_passes_and_the_daemon_path_gives_the_same_line(tmp_path: Path) -> None:
    from edgeinfer.server.artifacts import MODEL_FILES, read_sidecar
    from edgeinfer.server.errors import WeightsUnavailable
    from edgeinfer.server.startup_checks import SIDECAR_FLOWS

    assert set(SIDECAR_FLOWS) == set(MODEL_FILES)
    repo = _repo(tmp_path, json.dumps(GOOD_SIDECAR))
    folder = repo / "squeezenet1_0" / "int8-x86"
    assert read_checked_sidecar(folder)["flow"] == "fx"
    (folder / SIDECAR).write_text(_without("torch"))
    with pytest.raises(SidecarError, match="lacks 'torch'"):
        read_checked_sidecar(folder)
    with pytest.raises(WeightsUnavailable, match="lacks 'torch'; re-make it with: edgequant --model squeezenet1_0"):
        read_sidecar(folder, repository=repo, model="squeezenet1_0")


def test_the_torch_free_model_table_is_the_registrys() -> None:
    from edgeinfer.server import model_names, registry

    assert sorted(model_names.MODEL_ALIASES) == registry.list_models()
    assert {n: registry.get_spec(n).aliases for n in registry.list_models()} == model_names.MODEL_ALIASES
    assert model_names.known_models() == registry.known_models()
    for name in ("SqueezeNet", "squeezenet1.1", "inception-v3", "Inception"):
        assert model_names.canonical_name(name) == registry.get_spec(name).name


# Hides packages of the [server] and [quant] extras, as a client-only install lacks them.
_CLIENT_ONLY = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ["{prog}", "--model", "squeezenet", "--calib", "synthetic"]
{call}
"""


@pytest.mark.parametrize(
    ("prog", "hidden", "call", "extra", "names"),
    [
        (
            "edgeserver",
            ("torch", "torchvision", "grpc_interceptor", "grpc_health", "grpc_reflection"),
            "from edgeinfer.server.cli_support import edgeserver; sys.exit(edgeserver())",
            "edge",
            "grpcio-health-checking, grpcio-reflection, grpc-interceptor",  # torch: only for torch models
        ),
        (
            "edgequant",
            ("torch", "cv2", "torchao"),
            "from edgeinfer.quant.cli import main; sys.exit(main())",
            "quant",
            "torch, opencv-python-headless, torchao",
        ),
    ],
)
def test_a_client_only_install_names_the_extra(prog: str, hidden: tuple[str, ...], call: str, extra: str, names: str):
    code = _CLIENT_ONLY.format(hidden=set(hidden), prog=prog, call=call)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    how = f"(pip install 'edgeinfer[{extra}]')"
    if prog == "edgeserver":
        how = (
            "for a board (ONNX models; pip install 'edgeinfer[edge]') or [server] for torch models "
            "(pip install 'edgeinfer[server]')"
        )
    assert out.stderr.splitlines() == [
        f"{prog}: error: this install of edgeinfer lacks {names}, which {prog} needs: install the [{extra}] extra "
        f"{how}; the client alone needs none of them"
    ]


def test_threads_default_is_one_below_the_cores_in_code_and_help() -> None:
    import os

    from edgeinfer.server.cli_args import build_parser
    from edgeinfer.server.defaults import default_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert default_threads() == max(1, cores - 1)
    parser = build_parser()
    assert parser.parse_args(["--model", "squeezenet"]).threads == max(1, cores - 1)
    text = " ".join(parser.format_help().split())
    assert f"(default: one below the cores, at least 1: {max(1, cores - 1)} here;" in text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "`--threads` (default: one below the core count, at least 1" in " ".join(readme.split())


def test_a_bind_failure_after_the_checks_names_the_unix_socket(tmp_path: Path) -> None:
    from edgeinfer.server.cli_args import listen_error

    sock = tmp_path / "gone" / "edge.sock"  # its folder vanished between the check and the bind
    line = listen_error(RuntimeError("Failed to bind to address"), ["localhost:50051", f"unix:{sock}"])
    expected = f"folder {sock.parent} does not exist (create it, or name a socket in an existing folder)"
    assert line == f"cannot listen on unix:{sock}: {expected}"
    line = listen_error(RuntimeError("Failed to bind to address"), ["localhost:50051"])
    assert "the port is in use or the address is not this host's (another edgeserver?" in line
