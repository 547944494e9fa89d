"""``--server`` as a user types it, checked and completed before anything connects.

gRPC takes a port of 99999 as 99999 mod 65536 and a host without a port as port 443:
both then fail 30 s later naming a port nobody typed. Here a target is refused at once
(ValueError, one line) or completed with the daemon's own port.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_PORT", "normalize_target"]

DEFAULT_PORT = 50051  # edgeserver's default --port
_PREFIXED_LIST = ("ipv4:", "ipv6:")
_DNS = re.compile(r"dns:(?://[^/]*/)?(?P<rest>.*)")


def normalize_target(target: str) -> str:
    """``target`` with every address given a port (``localhost`` -> ``localhost:50051``); ValueError when
    a port is not 1-65535 or a host is missing. ``unix:`` paths pass as they are."""
    target = target.strip()
    if not target:
        raise ValueError("empty target: give host:port (e.g. localhost:50051) or unix:/path")
    if target.startswith(("unix:", "unix-abstract:")):
        if not target.partition(":")[2]:
            raise ValueError(f"{target!r}: give the socket's path, e.g. unix:/run/edgeinfer.sock")
        return target
    if target.startswith(_PREFIXED_LIST):
        scheme, _, rest = target.partition(":")
        return f"{scheme}:" + ",".join(_address(a, target) for a in rest.split(","))
    dns = _DNS.fullmatch(target)
    if dns is not None:
        rest = dns["rest"]
        return target[: len(target) - len(rest)] + _address(rest, target)
    if "://" in target:
        raise ValueError(f"{target!r}: give host:port, unix:/path, dns:///name:port or ipv4:host:port,...")
    return _address(target, target)


def _address(address: str, target: str) -> str:
    """``host[:port]`` / ``[v6][:port]`` / a bare IPv6 address, with the port checked or the default added."""
    address = address.strip()
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{target!r}: an IPv6 address is written [addr]:port, e.g. [::1]:{DEFAULT_PORT}")
        host, port = f"[{host}]", rest[1:] if rest else None
        bare = host == "[]"
    elif address.count(":") > 1:  # a bare IPv6 address: it has no room for a port
        host, port, bare = f"[{address}]", None, False
    else:
        host, colon, port_text = address.partition(":")
        port = port_text if colon else None
        bare = not host
    if bare:
        raise ValueError(f"{target!r}: no host (e.g. localhost:{DEFAULT_PORT})")
    if port is None:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{target!r}: port must be 1-65535, got {port!r}")
    return f"{host}:{int(port)}"
