"""A request that is not the protobuf its method takes is INVALID_ARGUMENT, never INTERNAL.

gRPC Python answers a request its deserializer cannot parse with INTERNAL
("Exception deserializing request!"), which reads as a bug in the daemon. This
interceptor gives every method (ours, health, reflection) a deserializer that
never fails: bytes that do not parse become a :class:`Malformed` marker, and the
call is answered INVALID_ARGUMENT with one line naming the message it expected.
In a stream, the marker raises :class:`InvalidRequest` where the handler reads
it, so the answers to the frames before it still go out.

Install it after :class:`StatusInterceptor` (closer to the handlers), which
turns that error into the call's status.

:class:`StatusInterceptor` is grpc-interceptor's ``ExceptionToStatusInterceptor``
with the status details clipped to one line of at most ``MAX_DETAILS``
characters. Errors quote what the client sent (a model name, a key); a 100 KB
name quoted in a status goes over gRPC's 16 KB metadata limit, and the client's
transport then tears down the whole connection with GOAWAY, every other call on
it included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from grpc_interceptor import ExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException

from edgeinfer.server.errors import InvalidRequest

__all__ = ["MAX_DETAILS", "Malformed", "MalformedRequestInterceptor", "StatusInterceptor", "clip_details", "tolerant"]

MAX_DETAILS = 1000  # characters of a status's details; UTF-8 keeps that well under gRPC's 8 KB soft limit


def clip_details(details: str) -> str:
    """One line, at most MAX_DETAILS characters."""
    line = details.replace("\r", " ").replace("\n", " ")
    if len(line) <= MAX_DETAILS:
        return line
    return f"{line[: MAX_DETAILS - 40]}... ({len(line)} characters in all)"


class StatusInterceptor(ExceptionToStatusInterceptor):
    """Domain errors to their status (server/errors.py), anything else to INTERNAL; details clipped."""

    def __init__(self) -> None:
        super().__init__(status_on_unknown_exception=grpc.StatusCode.INTERNAL)

    def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: grpc.ServicerContext, method_name: str
    ) -> NoReturn:
        if isinstance(ex, GrpcException):
            context.abort(ex.status_code, clip_details(ex.details))
        elif not context.code():
            context.abort(grpc.StatusCode.INTERNAL, clip_details(repr(ex)))
        raise ex


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


def _check(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidRequest(request.message)
    return request


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _check(request)


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: Any
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = tolerant(handler.request_deserializer, details.method)
        if handler.unary_unary is not None:
            uu = handler.unary_unary
            return handler._replace(
                request_deserializer=parse, unary_unary=lambda request, context: uu(_check(request), context)
            )
        if handler.unary_stream is not None:
            us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                yield from us(_check(request), context)

            return handler._replace(request_deserializer=parse, unary_stream=unary_stream)
        if handler.stream_unary is not None:
            su = handler.stream_unary
            return handler._replace(
                request_deserializer=parse,
                stream_unary=lambda requests, context: su(_checked(requests), context),
            )
        ss = handler.stream_stream
        return handler._replace(
            request_deserializer=parse, stream_stream=lambda requests, context: ss(_checked(requests), context)
        )
