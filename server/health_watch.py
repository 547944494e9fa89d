"""grpc.health.v1 on the event loop: grpc's asyncio HealthServicer, with a Watch that keeps every watcher told.

grpcio-health-checking's asyncio ``Watch`` deletes its service's condition when
any one watcher ends; the other watchers of that service keep waiting on the
deleted condition and never hear of a change again (a Kubernetes or mesh probe
watching "" would miss NOT_SERVING on a drain). Here a service's condition goes
only with its last watcher: no watcher misses a change, and names a client made
up to watch leave nothing behind.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]


class HealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._watching: Counter[str] = Counter()

    def watchers(self, service: str) -> int:
        return self._watching[service]

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        service = request.service
        condition: asyncio.Condition = self._server_watchers[service]
        self._watching[service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    await condition.wait()
        finally:
            self._watching[service] -= 1
            if self._watching[service] <= 0:
                del self._watching[service]
                if self._server_watchers.get(service) is condition:
                    del self._server_watchers[service]
