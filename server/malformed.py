"""A request that is not the protobuf its method takes is INVALID_ARGUMENT, never INTERNAL; status details stay short.

gRPC Python answers a request its deserializer cannot parse with INTERNAL
("Exception deserializing request!"), which reads as a bug in the daemon. The
daemon's front door (server/front_door.py) gives every method (ours, health,
reflection) a deserializer that never fails (:func:`tolerant`): bytes that do not
parse become a :class:`Malformed` marker, and the call is answered INVALID_ARGUMENT
with one line naming the message it expected. In a stream, the marker raises
InvalidRequest where the handler reads it, so the answers to the frames before it
still go out.

Status details are clipped to one line of at most ``MAX_DETAILS`` characters
(:func:`clip_details`). Errors quote what the client sent (a model name, a key);
a 100 KB name quoted in a status goes over gRPC's 16 KB metadata limit, and the
client's transport then tears down the whole connection with GOAWAY, every other
call on it included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DETAILS", "Malformed", "clip_details", "tolerant"]

MAX_DETAILS = 1000  # characters of a status's details; UTF-8 keeps that well under gRPC's 8 KB soft limit


def clip_details(details: str) -> str:
    """One line, at most MAX_DETAILS characters."""
    line = details.replace("\r", " ").replace("\n", " ")
    if len(line) <= MAX_DETAILS:
        return line
    return f"{line[: MAX_DETAILS - 40]}... ({len(line)} characters in all)"


class Malformed:
    """Stands for one request whose bytes did not parse."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def tolerant(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``deserializer`` that returns a :class:`Malformed` instead of raising."""
    expected = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = expected.full_name if expected is not None else "request message"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Malformed(
                f"the request to {method} is not a valid {name} ({len(data)} bytes: {reason}); send a serialized {name}"
            )

    return parse
