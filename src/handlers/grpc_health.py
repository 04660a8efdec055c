"""The standard gRPC health service (``grpc.health.v1.Health``, from ``grpcio-health-checking``)
answering from the CA's readiness (design §9).

Services reported: ``""`` (the whole server) and ``dapr.proto.sentry.v1.CA``; both SERVING only
while the CA is ready (the same rule as ``/healthz``), NOT_SERVING otherwise. Any other service
name is NOT_FOUND (the library's behaviour).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .grpc_service import SERVICE

SERVICES = ("", SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health.HealthServicer):
    """``Check`` evaluates ``probe()`` (``(ready, details)``) at call time; ``refresh()`` does the
    same for ``Watch`` streams (called by the CA's background upkeep and after a restart)."""

    def __init__(self, probe: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        super().__init__(experimental_non_blocking=True)
        self._probe = probe
        for service in SERVICES:
            self.set(service, NOT_SERVING)

    def refresh(self) -> bool:
        """Re-evaluate readiness and publish it for every service; returns whether ready."""
        ready, _ = self._probe()
        status = SERVING if ready else NOT_SERVING
        for service in SERVICES:
            self.set(service, status)
        return ready

    def Check(self, request, context):
        if request.service in SERVICES:
            self.refresh()
        return super().Check(request, context)


Probe = Callable[[], tuple[bool, dict[str, Any]]]


def add_health_to_server(probe: Probe, server: grpc.Server) -> ReadinessHealth:
    """Register the health service on ``server``; returns it (call ``enter_graceful_shutdown()``
    before stopping the server so watchers learn NOT_SERVING first)."""
    servicer = ReadinessHealth(probe)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
