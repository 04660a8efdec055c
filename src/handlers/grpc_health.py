"""The standard gRPC health service (``grpc.health.v1.Health``, from ``grpcio-health-checking``,
its asyncio servicer) answering from the CA's readiness (design §9).

Services reported: ``""`` (the whole server) and ``dapr.proto.sentry.v1.CA``; both SERVING only
while the CA is ready (the same rule as ``/healthz``), NOT_SERVING otherwise. Any other service
name is NOT_FOUND (the library's behaviour). The readiness probe may ask a backend (the
Kubernetes API, a JWKS endpoint), so it runs in the loop's default thread pool, never on the
event loop: a slow backend delays a health answer, not the CA's other calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .grpc_service import SERVICE

SERVICES = ("", SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Probe = Callable[[], tuple[bool, dict[str, Any]]]


class ReadinessHealth(health_aio.HealthServicer):
    """``Check`` evaluates ``probe()`` (``(ready, details)``) at call time; ``refresh()`` does the
    same for ``Watch`` streams (called by the CA's background upkeep and after a restart).
    Create it and call its coroutines on the gRPC server's event loop."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self._probe = probe

    async def refresh(self) -> bool:
        """Re-evaluate readiness and publish it for every service; returns whether ready."""
        ready, _ = await asyncio.get_running_loop().run_in_executor(None, self._probe)
        status = SERVING if ready else NOT_SERVING
        for service in SERVICES:
            await self.set(service, status)
        return ready

    async def Check(self, request, context):
        if request.service in SERVICES:
            await self.refresh()
        return await super().Check(request, context)


async def add_health_to_server(probe: Probe, server: grpc.aio.Server) -> ReadinessHealth:
    """Register the health service on ``server`` (every service NOT_SERVING until the first
    refresh); returns it (await ``enter_graceful_shutdown()`` before stopping the server so
    watchers learn NOT_SERVING first). Run on the server's event loop."""
    servicer = ReadinessHealth(probe)
    for service in SERVICES:
        await servicer.set(service, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
