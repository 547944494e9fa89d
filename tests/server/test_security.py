"""Transport and identity: loopback by default, TLS and mutual TLS with real certificates (trustme),
certificate rotation under a live stream, bearer tokens on every service but health, no token in logs."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgeinfer.client import EdgeClient, EdgeInferError
from edgeinfer.client.api import channel_options
from edgeinfer.client.security import Credentials, _TokenInterceptor
from edgeinfer.server import Daemon, WeightsSource, load_model
from edgeinfer.server.cli import build_parser, exposure, main
from edgeinfer.server.security import (
    BearerTokenInterceptor,
    ExposureError,
    SecurityConfigError,
    ServerTls,
    Tokens,
    is_loopback,
    tcp_address,
)
from helpers import jpeg, synthetic_frame

TOKEN = "robot-fleet-7f3a9c2e51d04b8e"  # what the daemon accepts; searched for in the logs
OTHER_TOKEN = "intruder-0b1c2d3e4f5a6b7c"


@dataclass
class Pki:
    """Files made by trustme: two CAs, server certificates from each, an expired one, client certificates."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, ca2, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    names = ("localhost", "127.0.0.1", "::1")

    def leaf(stem: str, cert: trustme.LeafCert) -> None:
        cert.cert_chain_pems[0].write_to_path(str(root / f"{stem}_cert.pem"))
        cert.private_key_pem.write_to_path(str(root / f"{stem}_key.pem"))

    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    ca2.cert_pem.write_to_path(str(root / "ca2.pem"))
    rogue_ca.cert_pem.write_to_path(str(root / "rogue_ca.pem"))
    leaf("server", ca.issue_cert(*names))
    leaf("server2", ca2.issue_cert(*names))
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    leaf("expired", ca.issue_cert(*names, not_before=past, not_after=past + datetime.timedelta(days=30)))
    leaf("named", ca.issue_cert("robot1.fleet.example"))  # names no address the tests connect to
    leaf("client", ca.issue_cert("robot-1@fleet"))
    leaf("rogue", rogue_ca.issue_cert("robot-1@fleet"))
    for p in root.glob("*_key.pem"):
        p.chmod(0o600)
    return Pki(root)


@contextlib.contextmanager
def running(addresses: list[str] | None = None, *, model: bool = False, **kwargs: object) -> Iterator[Daemon]:
    daemon = Daemon(addresses or ["localhost:0"], **kwargs).start()  # type: ignore[arg-type]
    try:
        if model:
            weights = WeightsSource("random", seed=0)
            daemon.add_model(load_model("squeezenet", weights=weights, batch_sizes=[1], warmup=False))
        daemon.mark_ready()
        yield daemon
    finally:
        daemon.stop(grace=0)


@pytest.fixture(scope="module")
def tls_daemon(pki: Pki) -> Iterator[Daemon]:
    """TLS, no client certificates asked for, no tokens, no models (handshakes only)."""
    with running(tls=ServerTls(pki.server_cert, pki.server_key)) as d:
        yield d


@pytest.fixture(scope="module")
def mtls_daemon(pki: Pki) -> Iterator[Daemon]:
    with running(tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca)) as d:
        yield d


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The network setup: TLS and tokens, with a model; plus a plaintext Unix socket (tokens still apply)."""
    folder = tmp_path_factory.mktemp("secured")
    tokens = folder / "tokens"
    tokens.write_text(f"# robots of fleet 7\n\n{TOKEN}\n  another-token-for-the-dashboard  \n")
    tokens.chmod(0o600)
    addresses = ["localhost:0", f"unix:{folder / 'edge.sock'}"]
    with running(
        addresses, model=True, tls=ServerTls(pki.server_cert, pki.server_key), tokens=Tokens.from_file(tokens)
    ) as d:
        yield d


def _target(daemon: Daemon) -> str:
    return f"localhost:{daemon.port}"


def _refusal(target: str, **credentials: object) -> EdgeInferError:
    with EdgeClient(target, timeout=10, **credentials) as client:  # type: ignore[arg-type]
        return _refusal_of(client)


def _refusal_of(client: EdgeClient) -> EdgeInferError:
    with pytest.raises(EdgeInferError) as info:
        client.models()
    return info.value


# -- where it listens -----------------------------------------------------------------


def _listening(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses of every socket in LISTEN state on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            ip = ipaddress.ip_address(words)
            found.add(getattr(ip, "ipv4_mapped", None) or ip)  # grpc may bind 127.0.0.1 as ::ffff:127.0.0.1
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net")
def test_a_daemon_without_host_flags_listens_on_loopback_only() -> None:
    security = exposure(build_parser().parse_args(["--model", "squeezenet", "--port", "0"]))
    assert security.addresses == ["localhost:0"] and security.tls is None and security.plaintext_exposed == []
    with running(security.addresses) as daemon:
        bound = _listening(daemon.port)
        assert ipaddress.ip_address("127.0.0.1") in bound
        assert bound <= {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        assert all(ip.is_loopback for ip in bound)
        with EdgeClient(_target(daemon)) as client:
            assert client.models() == []


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("localhost:1", True),
        ("127.0.0.1:1", True),
        ("127.3.4.5:1", True),
        ("[::1]:1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("unix:/run/edge.sock", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("192.168.1.20:1", False),
        ("robot1.local:1", False),
    ],
)
def test_which_addresses_count_as_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.168.1.20"])
def test_non_loopback_without_tls_refuses_before_loading(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    # alexnet is no model of ours: had it got as far as loading, the error would say so instead.
    assert main(["--model", "alexnet", "--host", host, "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("edgeserver: error: refusing to serve") and "in plaintext" in err
    assert "--tls-cert/--tls-key" in err and "--insecure" in err
    with pytest.raises(ExposureError):
        Daemon([tcp_address(host, 0)])


def test_edgeserver_refusal_is_one_line_and_status_2() -> None:
    exe = shutil.which("edgeserver") or str(Path(sys.executable).with_name("edgeserver"))
    out = subprocess.run(
        [exe, "--model", "squeezenet", "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "--tls-cert/--tls-key" in out.stderr and "--insecure" in out.stderr


class _FakeDaemon:
    """Stands in for the gRPC server where the test would otherwise listen on the network."""

    created: list[dict[str, object]] = []

    def __init__(self, addresses: list[str], **kwargs: object) -> None:
        self.listening = list(addresses)
        _FakeDaemon.created.append({"addresses": addresses, **kwargs})

    def start(self) -> _FakeDaemon:
        return self

    def stop(self, grace: float | None = None) -> None:
        pass


def test_insecure_serves_plaintext_says_so_once_and_metrics_stay_on_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import faulthandler
    import signal

    import prometheus_client

    import edgeinfer.server.app

    metrics: list[tuple[int, str]] = []
    monkeypatch.setattr(edgeinfer.server.app, "Daemon", _FakeDaemon)
    # main() installs signal handlers for a process of its own: not in the test runner's.
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(faulthandler, "register", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        prometheus_client, "start_http_server", lambda port, addr="0.0.0.0": metrics.append((port, addr))
    )
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    (tmp_path / "tokens").chmod(0o600)
    (tmp_path / "weights.pth").write_bytes(b"not a checkpoint")  # found at load, after listening
    argv = ["--model", "squeezenet", "--weights", str(tmp_path / "weights.pth"), "--host", "0.0.0.0", "--port", "0"]
    argv += ["--insecure", "--metrics-port", "9999"]
    assert main([*argv, "--token-file", str(tmp_path / "tokens")]) == 2  # the unreadable weights, after listening
    out, err = capsys.readouterr()
    notes = [line for line in out.splitlines() if "--insecure" in line]
    assert notes == [
        "edgeserver: --insecure: serving 0.0.0.0:0 in plaintext: anyone on that network can read frames and "
        "answers and bearer tokens"
    ]
    assert "weights.pth is not a state_dict" in err
    assert _FakeDaemon.created[-1]["addresses"] == ["0.0.0.0:0"] and _FakeDaemon.created[-1]["insecure"] is True
    assert metrics == [(9999, "127.0.0.1")]  # /metrics: loopback unless --metrics-host says otherwise
    assert build_parser().parse_args([*argv, "--metrics-host", "0.0.0.0"]).metrics_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca (mutual TLS) needs"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "/nonexistent.pem does not exist"),
        (["--token-file", "/nonexistent-tokens"], "cannot read token file /nonexistent-tokens"),
    ],
)
def test_tls_and_token_flag_mistakes_are_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", "squeezenet", "--port", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err


def test_a_key_that_is_not_the_certificates_is_refused_at_start(pki: Pki) -> None:
    with pytest.raises(
        SecurityConfigError, match=r"are not a PEM certificate and its private key \(the key is not the"
    ):
        ServerTls(pki.server_cert, pki.server2_key)
    with pytest.raises(SecurityConfigError, match="holds no PEM CA certificate"):
        ServerTls(pki.server_cert, pki.server_key, client_ca=pki.server_key)


# -- TLS handshakes ---------------------------------------------------------------------


def test_tls_handshake_with_the_right_ca(tls_daemon: Daemon, pki: Pki) -> None:
    for target in (f"localhost:{tls_daemon.port}", f"127.0.0.1:{tls_daemon.port}"):
        with EdgeClient(target, tls_ca=pki.ca) as client:
            assert client.models() == []
    with EdgeClient(_target(tls_daemon), tls_ca=pki.ca.read_bytes()) as client:  # PEM bytes work as well as paths
        assert client.models() == []


def test_wrong_ca_is_one_line_naming_it(tls_daemon: Daemon, pki: Pki) -> None:
    error = _refusal(_target(tls_daemon), tls_ca=pki.ca2)
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.handshake
    assert error.details == (
        f"TLS handshake with {_target(tls_daemon)} failed: the daemon's certificate is not signed by the CA "
        f"the client trusts ({pki.ca2})"
    )


def test_plaintext_client_of_a_tls_daemon_is_told_to_use_tls(tls_daemon: Daemon) -> None:
    error = _refusal(_target(tls_daemon))
    assert error.handshake and "it may serve TLS only (give --tls-ca" in error.details


def test_expired_server_certificate_is_refused(pki: Pki) -> None:
    with running(tls=ServerTls(pki.expired_cert, pki.expired_key, allow_expired=True)) as daemon:
        error = _refusal(_target(daemon), tls_ca=pki.ca)
    assert error.handshake and "the daemon's certificate has expired" in error.details


def test_a_certificate_for_another_name_is_refused(pki: Pki) -> None:
    with running(tls=ServerTls(pki.named_cert, pki.named_key)) as daemon:
        error = _refusal(_target(daemon), tls_ca=pki.ca)
    assert error.handshake and "the daemon's certificate does not name 'localhost'" in error.details


def test_mutual_tls_admits_only_clients_of_its_ca(mtls_daemon: Daemon, pki: Pki) -> None:
    target = _target(mtls_daemon)
    with EdgeClient(target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key) as client:
        assert client.models() == []
    missing = _refusal(target, tls_ca=pki.ca)
    assert missing.handshake and "it wants a client certificate" in missing.details
    rogue = _refusal(target, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key)
    assert rogue.handshake and "it does not accept this client certificate" in rogue.details


def test_a_failed_handshake_is_not_waited_out(tls_daemon: Daemon, pki: Pki) -> None:
    with EdgeClient(_target(tls_daemon), tls_ca=pki.ca2) as client, pytest.raises(EdgeInferError) as info:
        client.wait_ready("squeezenet", timeout=60)  # a retry cannot help: it raises at once
    assert info.value.handshake


def _edgeclient(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "frame.jpg"
    image.write_bytes(jpeg(synthetic_frame(0)))
    exe = shutil.which("edgeclient") or str(Path(sys.executable).with_name("edgeclient"))
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "EDGEINFER_TOKEN")}
    command = [exe, "--images", str(image), "--wait", "30", "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_edgeclient_wrong_ca_is_one_line(tls_daemon: Daemon, pki: Pki, tmp_path: Path) -> None:
    out = _edgeclient(tmp_path, "--server", _target(tls_daemon), "--tls-ca", str(pki.ca2))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"edgeclient: UNAVAILABLE: TLS handshake with {_target(tls_daemon)} failed: the daemon's certificate is not "
        f"signed by the CA the client trusts ({pki.ca2})",
    ]


# -- tokens ------------------------------------------------------------------------------


def test_right_missing_and_wrong_token(secured: Daemon, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEINFER_TOKEN", raising=False)
    target = _target(secured)
    with EdgeClient(target, tls_ca=pki.ca, token=TOKEN) as client:
        assert [m.name for m in client.models()] == ["squeezenet1_0"]
    with EdgeClient(target, tls_ca=pki.ca, token="another-token-for-the-dashboard") as client:
        assert len(client.models()) == 1  # every token of the file, spaces around it stripped
    missing = _refusal(target, tls_ca=pki.ca)
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED and not missing.handshake
    assert missing.details.startswith("this daemon needs a bearer token: send metadata 'authorization: Bearer")
    wrong = _refusal(target, tls_ca=pki.ca, token=OTHER_TOKEN)
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details == "the bearer token was not accepted by this daemon (see its --token-file)"
    monkeypatch.setenv("EDGEINFER_TOKEN", TOKEN)  # the fallback when no token is given
    with EdgeClient(target, tls_ca=pki.ca) as client:
        assert len(client.models()) == 1


def test_edgeclient_with_tls_ca_and_token_file(secured: Daemon, pki: Pki, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"# issued to robot 1\n{TOKEN}\n")
    out = _edgeclient(tmp_path, "--server", _target(secured), "--tls-ca", str(pki.ca), "--token-file", str(token))
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(a["kind"], a["model"], len(a["top_k"])) for a in answers] == [("prediction", "squeezenet1_0", 5)]
    token.write_text(OTHER_TOKEN)
    out = _edgeclient(tmp_path, "--server", _target(secured), "--tls-ca", str(pki.ca), "--token-file", str(token))
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (
        "edgeclient: UNAUTHENTICATED: the bearer token was not accepted by this daemon (see its --token-file)"
    )
    out = _edgeclient(tmp_path, "--server", _target(secured), "--token-file", str(tmp_path / "none"))
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"edgeclient: cannot read token file {tmp_path / 'none'}: No such file or directory"
    ]


def test_streams_need_the_token_too(secured: Daemon, pki: Pki) -> None:
    frames = [synthetic_frame(i) for i in range(3)]
    with EdgeClient(_target(secured), tls_ca=pki.ca, token=TOKEN) as client:
        assert [r.kind for r in client.stream(frames, drop_policy="all")] == ["prediction"] * 3
    with EdgeClient(_target(secured), tls_ca=pki.ca, token=OTHER_TOKEN) as client, pytest.raises(EdgeInferError) as e:
        list(client.stream(frames, drop_policy="all"))
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_unix_socket_stays_plaintext_and_still_needs_the_token(secured: Daemon) -> None:
    sock = secured.addresses[1]
    assert sock.startswith("unix:")
    with EdgeClient(sock, token=TOKEN) as client:  # gRPC local credentials carry the token over the socket
        assert len(client.models()) == 1
    assert _refusal(sock).code == grpc.StatusCode.UNAUTHENTICATED


def test_health_answers_without_a_token_while_inference_does_not(secured: Daemon, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(_target(secured), creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgeinfer.v1.EdgeInference"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert _refusal(_target(secured), tls_ca=pki.ca).code == grpc.StatusCode.UNAUTHENTICATED


def _reflected_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return sorted(s.name for r in replies for s in r.list_services_response.service)


def test_reflection_needs_the_token(secured: Daemon, pki: Pki) -> None:
    plain = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(_target(secured), plain) as channel, pytest.raises(grpc.RpcError) as info:
        _reflected_services(channel)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Credentials(tls_ca=pki.ca, token=TOKEN).channel(_target(secured), channel_options()) as channel:
        assert "edgeinfer.v1.EdgeInference" in _reflected_services(channel)


def test_a_service_added_later_is_guarded_without_naming_it() -> None:
    """Exempt by name (health), not protected by name: the KServe v2 service inherits the token check."""
    live = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: live,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    daemon = Daemon(["localhost:0"], tokens=Tokens([TOKEN]))
    daemon.server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ServerLive": handler}),)
    )
    daemon.start()
    try:
        for token in (None, OTHER_TOKEN, TOKEN):
            with Credentials(token=token).channel(_target(daemon), channel_options()) as channel:
                call = channel.unary_unary(
                    "/inference.GRPCInferenceService/ServerLive",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                if token == TOKEN:
                    assert call(health_pb2.HealthCheckRequest(), timeout=10) == live
                    continue
                with pytest.raises(grpc.RpcError) as info:
                    call(health_pb2.HealthCheckRequest(), timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        daemon.stop(grace=0)


def test_tokens_never_reach_the_logs(secured: Daemon, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    BearerTokenInterceptor.LOG_EVERY_S = 0.0  # every refusal logged, so that each is searched
    try:
        with EdgeClient(_target(secured), tls_ca=pki.ca, token=OTHER_TOKEN) as client:
            with pytest.raises(EdgeInferError):
                client.models()
            with pytest.raises(EdgeInferError):
                list(client.stream([synthetic_frame(0)]))
        with EdgeClient(_target(secured), tls_ca=pki.ca, token=TOKEN) as client:
            assert [r.kind for r in client.stream([synthetic_frame(0)], drop_policy="all")] == ["prediction"]
    finally:
        BearerTokenInterceptor.LOG_EVERY_S = 10.0
    refusals = [r for r in caplog.records if r.name == "edgeinfer.server.security"]
    assert len(refusals) == 2 and "was not accepted" in refusals[0].getMessage()
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert OTHER_TOKEN not in text and TOKEN not in text
    assert "***" in repr(Credentials(token=TOKEN)) and TOKEN not in repr(Credentials(token=TOKEN))
    assert TOKEN not in repr(Tokens([TOKEN]))


def test_token_file_is_re_read_on_sighup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    with running(tokens=Tokens.from_file(path)) as daemon:
        path.write_text(f"# {TOKEN} was revoked\n{OTHER_TOKEN}\n")
        daemon.reload_credentials()  # what SIGHUP calls
        assert _refusal(_target(daemon), token=TOKEN).code == grpc.StatusCode.UNAUTHENTICATED
        with EdgeClient(_target(daemon), token=OTHER_TOKEN) as client:
            assert client.models() == []
        path.write_text("# emptied by mistake\n")
        daemon.reload_credentials()  # refused: the tokens read before stay
        assert "holds no token" in caplog.text
        with EdgeClient(_target(daemon), token=OTHER_TOKEN) as client:
            assert client.models() == []


def test_a_token_is_not_sent_in_plaintext_off_this_host() -> None:
    with pytest.raises(ValueError, match=r"a token would travel in plaintext to 192\.0\.2\.7:50051: give --tls-ca"):
        EdgeClient("192.0.2.7:50051", token=TOKEN)
    EdgeClient("192.0.2.7:50051", token=TOKEN, insecure=True).close()  # said so: an interceptor adds it


def test_insecure_client_token_reaches_a_plaintext_daemon() -> None:
    """The interceptor path (plaintext to another host, both sides --insecure), tried on loopback by IP."""
    with running(tokens=Tokens([TOKEN])) as daemon:
        # 127.0.0.1 would take the local-credentials path; build the channel as for a LAN address.
        plain = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{daemon.port}"), _TokenInterceptor(TOKEN))
        with EdgeClient(f"127.0.0.1:{daemon.port}", channel=plain) as client:
            assert client.models() == []
        with EdgeClient(f"127.0.0.1:{daemon.port}", channel=grpc.insecure_channel(f"127.0.0.1:{daemon.port}")) as c:
            assert _refusal_of(c).code == grpc.StatusCode.UNAUTHENTICATED


# -- rotation -----------------------------------------------------------------------------


def _install(pki: Pki, stem: str, folder: Path) -> None:
    """Replace the served files as a deploy tool would: each file swapped whole (write, then rename)."""
    for kind in ("cert", "key"):
        staged = folder / f".{kind}.new"
        shutil.copyfile(getattr(pki, f"{stem}_{kind}"), staged)
        os.replace(staged, folder / f"{kind}.pem")


def test_rotation_keeps_the_live_stream_and_new_connections_see_the_new_certificate(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _install(pki, "server", tmp_path)
    tls = ServerTls(tmp_path / "cert.pem", tmp_path / "key.pem")
    with running(model=True, tls=tls) as daemon:
        target = _target(daemon)
        send: queue.Queue = queue.Queue()

        def frames() -> Iterator[object]:
            while (i := send.get()) is not None:
                yield synthetic_frame(i)

        with EdgeClient(target, tls_ca=pki.ca) as old:
            answers = old.stream(frames(), drop_policy="all")
            send.put(0)
            assert next(answers).kind == "prediction"

            # A half-done rotation (the new certificate, the old key) is not taken: old clients still connect.
            shutil.copyfile(pki.server2_cert, tmp_path / "cert.pem")
            with EdgeClient(target, tls_ca=pki.ca) as again:
                assert again.models() is not None
            assert tls.reloads == 0 and "new connections keep the previous certificate" in caplog.text

            _install(pki, "server2", tmp_path)  # now signed by the second CA
            with EdgeClient(target, tls_ca=pki.ca2) as new:
                assert [m.name for m in new.models()] == ["squeezenet1_0"]
            assert tls.reloads == 1
            assert _refusal(target, tls_ca=pki.ca).handshake  # a new connection trusting the old CA fails

            for i in range(1, 4):  # the stream opened before the rotation goes on answering
                send.put(i)
                result = next(answers)
                assert (result.sequence, result.kind) == (i, "prediction")
            send.put(None)
            assert list(answers) == []

        # SIGHUP: re-read even files that look unchanged.
        daemon.reload_credentials()
        with EdgeClient(target, tls_ca=pki.ca2) as client:
            assert len(client.models()) == 1
        assert tls.reloads == 2
