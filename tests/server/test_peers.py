"""Peer identity for shared memory (issue 26 item 7): the uid comes from the connection's own 4-tuple,
IPv4-mapped addresses included; a peer the daemon cannot identify gets no shared memory; Unix-socket
peers only where the socket admits the daemon's own user alone."""

from __future__ import annotations

import ast
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import pytest

from edgeinfer.server.errors import NotLocal
from edgeinfer.server.peers import (
    Endpoint,
    connection_uid,
    listening_unix_paths,
    parse_peer,
    parse_tcp_table,
    tcp_peer_uid,
)
from edgeinfer.server.shm import is_local_peer, peer_uid
from fakes import SlowRunner, fake_model
from helpers import MakeDaemon

NOBODY = 65534
# A second user's process: root starts it as nobody, with an interpreter nobody may run (the test's own may sit
# in root's home) and this environment's packages on its path (same Python minor: same compiled extensions).
SYSTEM_PYTHON = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
ROOT_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or SYSTEM_PYTHON is None,
    reason="needs root on Linux and a system Python of this minor release: a second user's process",
)
_SITE = "import site; [site.addsitedir(p) for p in {paths!r}]\n"


def _as_nobody(code: str, *args: str, **kwargs: object) -> subprocess.Popen | subprocess.CompletedProcess:
    import site

    prelude = _SITE.format(paths=[p for p in sys.path if p.endswith("site-packages")] + site.getsitepackages())
    cmd = [str(SYSTEM_PYTHON), "-c", prelude + code, *args]
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    if kwargs.pop("background", False):
        return subprocess.Popen(cmd, user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/", **kwargs)
    return subprocess.run(cmd, user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/", **kwargs)


def _hex(ip: str, port: int) -> str:
    raw = ipaddress.ip_address(ip).packed
    words = struct.unpack(f"={len(raw) // 4}I", raw)  # as the kernel prints them: native-endian words
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _tcp6(*rows: tuple[str, int, str, int, int, int, int]) -> str:
    """A /proc/net/tcp6 text: (local ip, port, remote ip, port, state, uid, inode) per row."""
    head = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr "
    lines = [head + "tm->when retrnsmt   uid  timeout inode"]
    for i, (lip, lport, rip, rport, state, uid, inode) in enumerate(rows):
        lines.append(
            f"{i:4}: {_hex(lip, lport)} {_hex(rip, rport)} {state:02X} 00000000:00000000 00:00000000 00000000 "
            f"{uid:5} 0 {inode} 1 0000000000000000 20 4 30 10 -1"
        )
    return "\n".join(lines) + "\n"


DAEMON, VICTIM, ATTACKER = 0, 1000, 1001
SERVER = "::ffff:127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:50412", Endpoint(ipaddress.ip_address("127.0.0.1"), 50412)),
        ("ipv6:%5B::1%5D:54142", Endpoint(ipaddress.ip_address("::1"), 54142)),  # grpcio 1.85 percent-encodes
        ("ipv6:[::1]:54142", Endpoint(ipaddress.ip_address("::1"), 54142)),
        ("ipv6:%5B::ffff:127.0.0.5%5D:4000", Endpoint(ipaddress.ip_address("127.0.0.5"), 4000)),  # mapped: the v4
        ("unix:", "unix"),
        ("unix:/run/edge.sock", "unix"),
        ("ipv4:127.0.0.1:0", None),
        ("ipv6:%5Bnot-an-address%5D:1", None),
        ("dns:localhost:1", None),
    ],
)
def test_grpc_peer_strings_parse_as_addresses(peer: str, expected: object) -> None:
    assert parse_peer(peer) == expected


@pytest.mark.parametrize(
    ("peer", "local"),
    [("ipv6:%5B::1%5D:54142", True), ("ipv6:%5B::ffff:127.0.0.9%5D:1", True), ("ipv6:%5B::ffff:10.0.0.7%5D:1", False)],
)
def test_locality_is_read_from_the_parsed_address(peer: str, local: bool) -> None:
    assert is_local_peer(peer) is local


def test_an_ipv4_mapped_attacker_is_not_taken_for_the_first_socket_with_its_port() -> None:
    """The probe's case: a local user connects from [::ffff:127.0.0.2]:P while other sockets share port P."""
    p = 40001
    table = _tcp6(
        # listed first: the victim's own connection from 127.0.0.1:P to another service, and a socket of the daemon
        ("::ffff:127.0.0.1", p, "::ffff:127.0.0.1", 8080, 0x01, VICTIM, 11),
        ("::ffff:127.0.0.3", p, "::ffff:127.0.0.1", 50051, 0x01, DAEMON, 12),
        ("::ffff:127.0.0.1", 50051, "::", 0, 0x0A, DAEMON, 100),  # the daemon listening
        ("::ffff:127.0.0.1", 50051, "::ffff:127.0.0.3", p, 0x01, DAEMON, 102),
        ("::ffff:127.0.0.1", 50051, "::ffff:127.0.0.2", p, 0x01, DAEMON, 101),  # the daemon's end of the attack
        ("::ffff:127.0.0.2", p, "::ffff:127.0.0.1", 50051, 0x01, ATTACKER, 13),  # the attacker's end
    )
    entries = parse_tcp_table(table)
    attacker = parse_peer(f"ipv6:%5B::ffff:127.0.0.2%5D:{p}")
    assert isinstance(attacker, Endpoint)
    assert connection_uid(attacker, entries, {100, 101, 102, 12}) == ATTACKER
    # what the old lookup read: the uid of the first entry whose local port is the peer's
    assert next(e.uid for e in entries if e.local.port == p) == VICTIM
    # the other connection from port P is the daemon's own (inode 12): its uid, exactly
    assert connection_uid(Endpoint.of(ipaddress.ip_address("127.0.0.3"), p), entries, {100, 101, 102, 12}) == DAEMON


def test_a_peer_that_cannot_be_identified_gets_no_uid() -> None:
    p = 40002
    daemon_end = ("::ffff:127.0.0.1", 50051, "::ffff:127.0.0.2", p, 0x01, DAEMON, 101)
    client_end = ("::ffff:127.0.0.2", p, "::ffff:127.0.0.1", 50051, 0x01, ATTACKER, 13)
    peer = Endpoint.of(ipaddress.ip_address("127.0.0.2"), p)
    # the client's end is gone (closed, or in another network namespace)
    assert connection_uid(peer, parse_tcp_table(_tcp6(daemon_end)), {101}) is None
    # the connection is not one this process holds
    assert connection_uid(peer, parse_tcp_table(_tcp6(daemon_end, client_end)), {999}) is None
    # two entries claim the client's end: ambiguous, not "the first"
    twin = ("::ffff:127.0.0.2", p, "::ffff:127.0.0.1", 50051, 0x01, VICTIM, 14)
    assert connection_uid(peer, parse_tcp_table(_tcp6(daemon_end, client_end, twin)), {101}) is None
    # the client's end is not established (TIME_WAIT)
    waiting = ("::ffff:127.0.0.2", p, "::ffff:127.0.0.1", 50051, 0x06, ATTACKER, 0)
    assert connection_uid(peer, parse_tcp_table(_tcp6(daemon_end, waiting)), {101}) is None
    assert connection_uid(peer, parse_tcp_table(_tcp6(daemon_end, client_end)), {101}) == ATTACKER


def test_ipv4_and_ipv6_tables_are_read_alike() -> None:
    v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    v4 += f"   0: {_hex('127.0.0.1', 50051)} {_hex('127.0.0.2', 40003)} 01 0:0 00:0 0 0 0 101 1 0 20 4 30 10 -1\n"
    client_end = ("::ffff:127.0.0.2", 40003, "::ffff:127.0.0.1", 50051, 0x01, ATTACKER, 13)
    entries = parse_tcp_table(v4) + parse_tcp_table(_tcp6(client_end))
    assert connection_uid(Endpoint.of(ipaddress.ip_address("127.0.0.2"), 40003), entries, {101}) == ATTACKER


def test_listening_unix_sockets_are_found_by_inode() -> None:
    text = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 500 /run/edge.sock\n"
        "0000000000000000: 00000002 00000000 00000000 0001 03 501 /run/edge.sock\n"  # an accepted connection
        "0000000000000000: 00000002 00000000 00010000 0001 01 502 /run/other.sock\n"  # another process's
    )
    assert listening_unix_paths(text, {500, 501}) == ["/run/edge.sock"]


_CONNECT_AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.bind(("::ffff:127.0.0.2", 0))
s.connect(("::ffff:127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""


@ROOT_ONLY
def test_a_real_ipv4_mapped_connection_is_identified_by_its_own_four_tuple() -> None:
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::ffff:127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        other = _as_nobody(
            _CONNECT_AS_NOBODY, str(port), background=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert isinstance(other, subprocess.Popen)
        try:
            assert other.stdout is not None and other.stdin is not None
            their_port = int(other.stdout.readline())
            conn, _ = listener.accept()
            # a socket of ours with the same port number on another loopback address, as in the probe
            with socket.socket(socket.AF_INET6) as twin, conn:
                twin.bind(("::ffff:127.0.0.3", their_port))
                twin.connect(("::ffff:127.0.0.1", port))
                twin_conn, _ = listener.accept()
                with twin_conn:
                    assert tcp_peer_uid(Endpoint.of(ipaddress.ip_address("127.0.0.2"), their_port)) == NOBODY
                    assert tcp_peer_uid(Endpoint.of(ipaddress.ip_address("127.0.0.3"), their_port)) == 0
                    assert peer_uid(f"ipv6:%5B::ffff:127.0.0.2%5D:{their_port}") == NOBODY
                    with pytest.raises(NotLocal, match="cannot tell which local user"):
                        peer_uid(f"ipv6:%5B::ffff:127.0.0.4%5D:{their_port}")  # nobody there
            other.stdin.write("\n")
            other.stdin.flush()
        finally:
            other.wait(timeout=30)


_SHM_AS_NOBODY = """
import collections, sys, grpc
from edgeinfer.proto import edgeinfer_pb2 as pb, edgeinfer_pb2_grpc as rpc
config = pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, drop_policy=pb.DROP_POLICY_ALL,
                         shared_memory=pb.SharedMemoryRegion(key=sys.argv[2], byte_size=4096))
outcomes = collections.Counter()
for _ in range(int(sys.argv[3])):  # a new connection each try, as the probe made them
    with grpc.insecure_channel(sys.argv[1], options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            list(rpc.EdgeInferenceStub(channel).StreamClassify(iter([pb.StreamRequest(config=config)]), timeout=30))
            outcomes["READ"] += 1
        except grpc.RpcError as exc:
            outcomes[exc.code().name + ": " + exc.details()] += 1
print(dict(outcomes))
"""


@ROOT_ONLY
def test_another_users_shared_memory_is_refused_over_an_ipv4_mapped_connection(daemon: object) -> None:
    """The probe's case: a second user names the daemon's user's 0600 object from [::ffff:127.0.0.1], 20 times
    over 20 connections (13 of 20 read it before): refused every time, and the other way round too."""
    region = shared_memory.SharedMemory(create=True, size=4096)
    try:
        os.chmod(f"/dev/shm/{region.name}", 0o600)
        target = f"ipv6:[::ffff:127.0.0.1]:{daemon.port}"  # type: ignore[attr-defined]
        out = _as_nobody(_SHM_AS_NOBODY, target, "/" + region.name, "20", capture_output=True, text=True, timeout=120)
        refused = (
            f"INVALID_ARGUMENT: shared-memory object '/{region.name}' belongs to user {os.geteuid()}, not to this "
            f"stream's client (user {NOBODY}); create the object as the user that opens the stream"
        )
        assert out.stdout.strip() == repr({refused: 20}), out.stdout + out.stderr[-2000:]
        # and the other way: the daemon's user naming the second user's object over the same kind of connection
        os.chown(f"/dev/shm/{region.name}", NOBODY, -1)
        out = subprocess.run(
            [sys.executable, "-c", _SHM_AS_NOBODY, target, region.name, "3"], capture_output=True, text=True, timeout=60
        )
        [(outcome, count)] = ast.literal_eval(out.stdout.strip()).items()
        assert count == 3 and f"belongs to user {NOBODY}, not to this stream's client (user {os.geteuid()})" in outcome
    finally:
        region.close()
        region.unlink()


def test_unix_socket_peers_get_shared_memory_only_from_a_private_socket(make_daemon: MakeDaemon) -> None:
    from edgeinfer.proto import edgeinfer_pb2 as pb
    from edgeinfer.proto import edgeinfer_pb2_grpc as rpc

    folder = Path(tempfile.mkdtemp(prefix="edgeinfer-peers-", dir="/tmp"))  # pytest's tmp_path is in a 0700 folder
    try:
        folder.chmod(0o755)
        sock = folder / "edge.sock"
        make_daemon(fake_model(SlowRunner()), addresses=(f"unix:{sock}",))
        region = pb.SharedMemoryRegion(key="/edgeinfer-none", byte_size=8)
        config = pb.StreamConfig(model=pb.ModelSelector(name="squeezenet"), top_k=1, shared_memory=region)

        def attempt() -> tuple[grpc.StatusCode, str]:
            with grpc.insecure_channel(f"unix:{sock}") as channel, pytest.raises(grpc.RpcError) as info:
                stub = rpc.EdgeInferenceStub(channel)
                list(stub.StreamClassify(iter([pb.StreamRequest(config=config)]), timeout=30))
            return info.value.code(), info.value.details()

        sock.chmod(0o755)  # only the owner may write, so only the owner may connect: past identity, to the object
        code, details = attempt()
        assert code == grpc.StatusCode.NOT_FOUND and "no shared-memory object '/edgeinfer-none'" in details, details
        sock.chmod(0o777)  # any local user may connect: the daemon cannot tell who did
        code, details = attempt()
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert f"{sock} admits other users" in details and "cannot tell which user connects" in details
        folder.chmod(0o700)  # ... unless the folder on the way admits the daemon's user alone
        code, details = attempt()
        assert code == grpc.StatusCode.NOT_FOUND, details
    finally:
        shutil.rmtree(folder, ignore_errors=True)
