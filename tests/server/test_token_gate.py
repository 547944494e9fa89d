"""Tokens under 128 bits refused at start; repeated wrong tokens from one peer slowed down (issue 26 item 8)."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edgeinfer.client import EdgeClient, EdgeInferError
from edgeinfer.server import Daemon
from edgeinfer.server.peers import Endpoint
from edgeinfer.server.security import SecurityConfigError, Tokens
from edgeinfer.server.token_gate import TokenGate, token_bits, token_strength_problem

TOKEN = secrets.token_hex(16)
WRONG = secrets.token_hex(16)


@pytest.mark.parametrize(
    ("token", "bits"),
    [
        ("0123456789abcdef" * 2, 128),  # openssl rand -hex 16
        ("Zm9vYmFyYmF6cXV4MTIzNA==", 132),  # base64 of 16 bytes: 22 symbols x 6 bits, the padding not counted
        ("1234567890", 10 * 3.321928094887362),
        ("abcdefghij0123", 14 * 5.169925001442312),
    ],
)
def test_token_strength_is_length_times_the_alphabets_bits(token: str, bits: float) -> None:
    assert token_bits(token) == pytest.approx(bits, rel=1e-6)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("x", "is about 5 bits (1 characters), under the 128 needed"),
        ("robot-7", "is about 42 bits"),
        ("0123456789abcdef", "is about 64 bits (16 characters)"),  # 8 bytes of hex: half what is needed
        ("a" * 64, "has only 1 distinct characters"),
        ("abababababababababababababababababababab", "has only 2 distinct characters"),
    ],
)
def test_weak_tokens_are_named_with_their_strength(token: str, says: str) -> None:
    problem = token_strength_problem(token)
    assert problem is not None and says in problem and "openssl rand -hex 16" in problem


def test_random_tokens_of_16_bytes_pass() -> None:
    for _ in range(200):
        assert token_strength_problem(secrets.token_hex(16)) is None
        assert token_strength_problem(secrets.token_urlsafe(16)) is None


def test_a_weak_token_file_stops_edgeserver_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# fleet\n{TOKEN}\nhunter2\n")
    path.chmod(0o600)
    argv = ["--model", "squeezenet", "--weights", "random", "--port", "0", "--token-file", str(path)]
    code = f"import sys\nfrom edgeinfer.server.cli import main\nsys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "listening" not in out.stdout
    assert out.stderr.splitlines() == [
        f"edgeserver: error: token 2 in token file {path} is about 36 bits (7 characters), under the 128 needed: "
        "e.g. openssl rand -hex 16 (32 hex digits) or python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    ]
    with pytest.raises(SecurityConfigError, match="token 1 in the token list has only 1 distinct"):
        Tokens(["z" * 40])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_backs_off_per_peer_and_forgives_a_right_token() -> None:
    clock = Clock()
    gate = TokenGate(free_failures=5, base_s=1.0, max_s=8.0, clock=clock, uid_of=lambda e: None)
    attacker, other = "ipv4:192.0.2.7:40000", "ipv6:%5B2001:db8::9%5D:40001"
    assert [gate.failed(attacker) for _ in range(5)] == [0.0] * 5  # the first five are free
    assert gate.retry_after(attacker) == 0.0
    assert [gate.failed(attacker) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, up to max_s
    assert gate.retry_after(attacker) == 8.0
    assert gate.retry_after("ipv4:192.0.2.7:40999") == 8.0  # the same host from another port
    assert gate.retry_after(other) == 0.0  # another peer is not held back
    clock.now += 8.0
    assert gate.retry_after(attacker) == 0.0
    gate.succeeded(attacker)
    assert len(gate) == 0 and gate.failed(attacker) == 0.0  # forgiven: free failures again


def test_loopback_peers_are_told_apart_by_user() -> None:
    clock = Clock()
    uids = {40000: 1001, 40001: 1000}
    gate = TokenGate(free_failures=1, clock=clock, uid_of=lambda e: uids[e.port])
    assert gate.failed("ipv4:127.0.0.1:40000") == 0.0
    assert gate.failed("ipv4:127.0.0.1:40000") == 1.0
    assert gate.retry_after("ipv4:127.0.0.1:40000") == 1.0
    assert gate.retry_after("ipv4:127.0.0.1:40001") == 0.0  # the same address, another user: not held back


def test_the_gate_remembers_a_bounded_number_of_peers() -> None:
    clock = Clock()
    gate = TokenGate(max_peers=100, forget_s=60.0, clock=clock, uid_of=lambda e: None)
    for i in range(1000):
        gate.failed(f"ipv6:%5B2001:db8::{i:x}%5D:1")
    assert len(gate) == 100
    clock.now += 120.0
    gate.failed("ipv4:192.0.2.1:1")
    assert len(gate) == 1  # the quiet ones are forgotten


def test_a_daemon_slows_down_one_peers_wrong_tokens_and_not_anothers() -> None:
    clock = Clock()
    tokens = Tokens([TOKEN], gate=TokenGate(free_failures=5, base_s=30.0, clock=clock))
    daemon = Daemon(["localhost:0"], tokens=tokens).start()
    try:
        daemon.mark_ready()
        v4, v6 = f"127.0.0.1:{daemon.port}", f"[::1]:{daemon.port}"

        def models(target: str, token: str) -> grpc.StatusCode | int:
            with EdgeClient(target, token=token, timeout=10) as client:
                try:
                    return len(client.models())
                except EdgeInferError as exc:
                    assert exc.code == grpc.StatusCode.UNAUTHENTICATED
                    return exc.details

        assert models(v4, TOKEN) == 0
        for _ in range(5):
            assert "was not accepted" in models(v4, WRONG)
        # the sixth wrong token starts the back-off: then even the right token waits, from this peer only
        assert "was not accepted" in models(v4, WRONG)
        waiting = models(v4, TOKEN)
        assert waiting == "too many wrong bearer tokens from this client: retry in 30 s (see the daemon's --token-file)"
        assert models(v6, TOKEN) == 0  # [::1] is another peer
        clock.now += 31.0
        assert models(v4, TOKEN) == 0  # after the wait, and the right token forgives
        assert "was not accepted" in models(v4, WRONG)
    finally:
        daemon.stop(grace=0)


def test_peer_keys_use_the_parsed_address() -> None:
    seen: list[Endpoint] = []
    gate = TokenGate(free_failures=0, clock=Clock(), uid_of=lambda e: seen.append(e) or 7)
    gate.failed("ipv6:%5B::ffff:127.0.0.1%5D:5000")
    assert seen == [Endpoint(ipaddress.ip_address("127.0.0.1"), 5000)]
    assert gate.retry_after("ipv4:127.0.0.1:6000") > 0  # mapped and plain IPv4: one address, the same user 7


def test_kernel_lookups_are_bounded_per_second_and_cached() -> None:
    clock = Clock()
    asked: list[int] = []
    gate = TokenGate(
        free_failures=0, base_s=10, clock=clock, lookups_per_s=3, uid_of=lambda e: asked.append(e.port) or 1
    )
    gate.failed("ipv4:127.0.0.1:1")  # a failure on loopback: later calls from 127.0.0.1 need their uid
    for port in range(2, 12):
        gate.retry_after(f"ipv4:127.0.0.1:{port}")
    assert asked == [1, 2, 3]  # 3 a second; the rest count as unidentified meanwhile
    gate.retry_after("ipv4:127.0.0.1:2")
    assert asked == [1, 2, 3]  # cached
    clock.now += 1.0
    gate.retry_after("ipv4:127.0.0.1:11")
    assert asked == [1, 2, 3, 11]
    assert gate.retry_after("ipv4:127.0.0.1:1") > 0 and gate.retry_after("ipv4:192.0.2.1:1") == 0
