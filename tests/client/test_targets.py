"""`--server` as a user types it: refused at once when it cannot be right, completed with the daemon's port."""

from __future__ import annotations

import pytest

from edgeinfer.client.targets import normalize_target


@pytest.mark.parametrize(
    ("typed", "target"),
    [
        ("localhost", "localhost:50051"),  # gRPC alone would go to 443
        ("localhost:50052", "localhost:50052"),
        ("robot1:1", "robot1:1"),
        ("10.0.0.5:65535", "10.0.0.5:65535"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:50052", "[::1]:50052"),
        ("::1", "[::1]:50051"),
        ("unix:/run/edgeinfer.sock", "unix:/run/edgeinfer.sock"),
        ("dns:///robots.local", "dns:///robots.local:50051"),
        ("dns:///robots.local:6000", "dns:///robots.local:6000"),
        ("ipv4:10.0.0.5:50051,10.0.0.6", "ipv4:10.0.0.5:50051,10.0.0.6:50051"),
        ("ipv6:[::1]:50051,[::1]:50052", "ipv6:[::1]:50051,[::1]:50052"),
    ],
)
def test_targets_are_completed_with_the_daemons_port(typed: str, target: str) -> None:
    assert normalize_target(typed) == target


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("localhost:99999", "port must be 1-65535, got '99999'"),
        ("localhost:0", "port must be 1-65535, got '0'"),
        ("localhost:http", "port must be 1-65535, got 'http'"),
        ("localhost:", "port must be 1-65535, got ''"),
        ("[::1]:70000", "port must be 1-65535, got '70000'"),
        ("ipv4:10.0.0.5:50051,10.0.0.6:123456", "port must be 1-65535, got '123456'"),
        (":50051", "no host"),
        ("", "empty target"),
        ("unix:", "give the socket's path"),
        ("[::1", "an IPv6 address is written [addr]:port"),
        ("http://robot1:50051", "give host:port"),
    ],
)
def test_impossible_targets_are_refused(typed: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        normalize_target(typed)
