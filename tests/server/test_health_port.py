"""--health-port: grpc.health.v1 alone, in plaintext, for Kubernetes' gRPC probes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeinfer.proto import edgeinfer_pb2 as pb
from edgeinfer.proto import edgeinfer_pb2_grpc as pb_grpc
from edgeinfer.server import Daemon
from edgeinfer.server.app import SERVICE_NAME
from edgeinfer.server.cli import build_parser

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_port_follows_the_daemon_and_serves_nothing_else() -> None:
    d = Daemon(["127.0.0.1:0"], health_addresses=["127.0.0.1:0"]).start()
    try:
        assert len(d.health_ports) == 1 and d.health_ports[0] not in (0, d.port)
        with grpc.insecure_channel(f"127.0.0.1:{d.health_ports[0]}") as channel:
            assert [_status(channel, s) for s in ("", SERVICE_NAME)] == [NOT_SERVING, NOT_SERVING]  # loading
            d.mark_ready()
            assert [_status(channel, s) for s in ("", SERVICE_NAME)] == [SERVING, SERVING]
            with pytest.raises(grpc.RpcError) as info:  # inference stays on the main port (TLS, tokens)
                pb_grpc.EdgeInferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        d.stop(grace=0)


def test_health_port_is_off_unless_asked() -> None:
    assert build_parser().parse_args(["--model", "squeezenet"]).health_port is None
    assert build_parser().parse_args(["--model", "squeezenet", "--health-port", "8081"]).health_port == 8081
    d = Daemon(["127.0.0.1:0"])
    try:
        assert d.health_server is None and d.health_ports == []
    finally:
        d.stop(grace=0)


def test_health_port_holds_the_connection_caps_on_a_count_of_its_own() -> None:
    """--max-connections-per-peer on the health port too (20,000 idle sockets there would take the daemon's
    descriptors as well), counted apart from the main port's: a peer's clients do not lock out its probes."""
    import socket
    import time

    def ended(sock: socket.socket) -> bool:
        try:
            while sock.recv(4096, socket.MSG_DONTWAIT):  # the daemon's SETTINGS, then the end
                pass
            return True
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    d = Daemon(["127.0.0.1:0"], health_addresses=["127.0.0.1:0"], max_connections_per_peer=2).start()
    d.mark_ready()
    socks: dict[int, list[socket.socket]] = {d.port: [], d.health_ports[0]: []}
    try:
        for port, n in ((d.port, 2), (d.health_ports[0], 5)):
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                socks[port].append(s)
        deadline = time.monotonic() + 20
        while sum(map(ended, socks[d.health_ports[0]])) < 3:
            assert time.monotonic() < deadline, "the health port's connections over the cap were not closed"
            time.sleep(0.05)
        assert not any(map(ended, socks[d.port]))  # 2 on each port: the main port's are still at the cap
        with grpc.insecure_channel(f"127.0.0.1:{d.health_ports[0]}") as channel:
            assert _status(channel, "") == SERVING
        assert sum(map(ended, socks[d.health_ports[0]])) == 3
    finally:
        for s in socks[d.port] + socks[d.health_ports[0]]:
            s.close()
        d.stop(grace=0)
