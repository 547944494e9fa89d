"""The one door every call passes, before it reads a byte of its body: token, admission, then the handler.

gRPC's aio server reads a unary call's request before it calls the handler, so a
token check or a cap placed in the handler would come after the body (up to
--max-frame-bytes) was read, and a call sent as headers alone would wait for a
body that never comes. So :class:`FrontDoor` serves every method (ours, KServe's,
health, reflection) as a *streaming-request* method, which gRPC calls at once:
it checks the bearer token, admits the call (:mod:`edgeinfer.server.admission`),
and only then reads the request, within ``body_timeout``, and calls the service's
own handler with it. The client sees no difference: on the wire a unary request
is a stream of one message.

It also does what two sync interceptors did before: a request that does not
parse is INVALID_ARGUMENT, never INTERNAL (:func:`edgeinfer.server.malformed.tolerant`),
and a domain error (server/errors.py) becomes its status, with the details
clipped to one line (:func:`clip_details`). The status never carries frame bytes,
and the exception is let go with its traceback, which holds the call's frames.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_interceptor.exceptions import GrpcException

from edgeinfer.server.admission import Admission, Ticket, kind_of
from edgeinfer.server.errors import DeadlineExceeded, EdgeInferError, InvalidRequest, LimitExceeded
from edgeinfer.server.malformed import Malformed, clip_details, tolerant
from edgeinfer.server.security import BearerTokenInterceptor

__all__ = ["FrontDoor", "checked_requests", "read_error"]

log = logging.getLogger(__name__)

_NO_REQUEST = object()


async def checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream's requests; one that did not parse raises InvalidRequest where the handler reads it."""
    async for request in requests:
        if isinstance(request, Malformed):
            raise InvalidRequest(request.message)
        yield request


class FrontDoor(grpc.aio.ServerInterceptor):
    def __init__(
        self, admission: Admission, *, tokens: BearerTokenInterceptor | None = None, body_timeout: float = 10.0
    ) -> None:
        self.admission = admission
        self.tokens = tokens
        self.body_timeout = body_timeout

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        call = _Call(self, details.method, tuple(details.invocation_metadata or ()), handler)
        parse = tolerant(handler.request_deserializer, details.method) if handler.request_deserializer else None
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                call.streaming, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            call.unary, request_deserializer=parse, response_serializer=handler.response_serializer
        )


class _Call:
    """One call through the door: what it asked for, before anything was read."""

    __slots__ = ("door", "handler", "kind", "metadata", "method")

    def __init__(self, door: FrontDoor, method: str, metadata: tuple[Any, ...], handler: grpc.RpcMethodHandler):
        self.door = door
        self.method = method
        self.metadata = metadata
        self.handler = handler
        self.kind = kind_of(method, handler.request_streaming)

    async def _admit(self, context: grpc.aio.ServicerContext) -> Ticket:
        door = self.door
        if door.tokens is not None:
            problem = door.tokens.refusal(self.method, self.metadata, context.peer())
            if problem is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        return door.admission.enter(self.kind, context.peer())

    async def _request(self, requests: AsyncIterator[Any]) -> Any:
        """The one request of a unary-request method, within the door's body timeout."""
        try:
            request = await asyncio.wait_for(anext(requests, _NO_REQUEST), self.door.body_timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"the request's message did not arrive within {self.door.body_timeout:g} s of its headers"
            ) from None
        if request is _NO_REQUEST:
            raise InvalidRequest(f"{self.method} takes one request message; the call sent none")
        if isinstance(request, Malformed):
            raise InvalidRequest(request.message)
        return request

    async def unary(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        ticket: Ticket | None = None
        try:
            ticket = await self._admit(context)
            h = self.handler
            if h.request_streaming:
                result = h.stream_unary(checked_requests(requests), context)
            else:
                result = h.unary_unary(await self._request(requests), context)
            return (await result) if inspect.isawaitable(result) else result
        except Exception as exc:  # every error becomes the call's status here
            await _abort(context, exc, self.method)
        finally:
            if ticket is not None:
                ticket.release()

    async def streaming(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        ticket: Ticket | None = None
        responses: Any = None
        try:
            ticket = await self._admit(context)
            h = self.handler
            if h.request_streaming:
                responses = h.stream_stream(checked_requests(requests), context)
            else:
                responses = h.unary_stream(await self._request(requests), context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    await context.write(response)
            elif inspect.isawaitable(responses):  # a handler that writes itself (grpc's aio health Watch)
                await responses
            elif responses is not None:  # a sync generator (a generic handler)
                for response in responses:
                    await context.write(response)
        except Exception as exc:
            await _abort(context, exc, self.method)
        finally:
            if hasattr(responses, "aclose"):
                await responses.aclose()  # its finally blocks run now, not whenever it is collected
            if ticket is not None:
                ticket.release()


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """``exc`` as the call's status; the exception (and the frames its traceback holds) is let go here."""
    if isinstance(exc, grpc.aio.AbortError):  # the handler (or the door) already set the status
        raise exc
    exc.__traceback__ = None
    if isinstance(exc, GrpcException):
        code, details = exc.status_code, clip_details(exc.details)
    else:
        log.error("%s failed: %r", method, exc)
        code, details = grpc.StatusCode.INTERNAL, clip_details(repr(exc))
    del exc
    await context.abort(code, details)


def read_error(exc: grpc.aio.AioRpcError) -> EdgeInferError:
    """A stream's failed read as the error it ends with, after the answers to the frames read before it."""
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitExceeded(clip_details(exc.details() or "a message over this daemon's size limit"))
    return InvalidRequest(clip_details(exc.details() or str(exc.code())))
