"""The standard gRPC health service (``grpc.health.v1.Health``, from ``grpcio-health-checking``,
its asyncio servicer) answering from the CA's readiness (design §9).

Services reported: ``""`` (the whole server) and ``dapr.proto.sentry.v1.CA``; both SERVING only
while the CA is ready (the same rule as ``/healthz``), NOT_SERVING otherwise. Any other service
name is NOT_FOUND (the library's behaviour). The readiness probe may ask a backend (the
Kubernetes API, a JWKS endpoint), so it runs in the loop's default thread pool, never on the
event loop: a slow backend delays a health answer, not the CA's other calls.

Its calls are bounded like SignCertificate's (design §8.7): each takes a place of its peer address
(``--max-in-flight-per-peer``) at its HEADERS and its request message must arrive within
``--message-timeout``; they are not counted in ``--max-in-flight``, so the health service answers
while signing calls are refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from .call_limits import Guard, Refused, read_request
from .grpc_service import SERVICE
from .rate_limit import peer_host

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


HEALTH_SERVICE = "grpc.health.v1.Health"


def _bounded(guard: Guard, answer):
    """A handler that takes the peer's place, reads the one request under the deadline, then
    runs ``answer(request, context)``; the place is given back when the call ends."""

    async def handler(_requests, context: grpc.aio.ServicerContext):
        peer = peer_host(context.peer())
        refused = guard.slots.take(peer, guard.limits, in_total=False)
        if refused is not None:
            await context.abort(refused.code, refused.message)
        try:
            request = await read_request(context, guard.limits.message_timeout)
            if isinstance(request, Refused):
                await context.abort(request.code, request.message)
            return await answer(request, context)
        finally:
            guard.slots.give(peer, in_total=False)

    return handler


def _decode(data: bytes) -> health_pb2.HealthCheckRequest | None:
    try:
        return health_pb2.HealthCheckRequest.FromString(data)
    except DecodeError:  # INVALID_ARGUMENT below
        return None


async def add_health_to_server(probe: Probe, server: grpc.aio.Server, guard: Guard) -> ReadinessHealth:
    """Register the health service on ``server`` (every service NOT_SERVING until the first
    refresh), its calls bounded by ``guard``; returns it (await ``enter_graceful_shutdown()``
    before stopping the server so watchers learn NOT_SERVING first). Run on the server's loop."""
    servicer = ReadinessHealth(probe)
    for service in SERVICES:
        await servicer.set(service, NOT_SERVING)

    def decoded(method):
        async def answer(request, context):
            if request is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a HealthCheckRequest message")
            return await method(request, context)

        return answer

    serialize = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        # Request-streaming on the server (the same stream on the wire) so the request has a deadline.
        "Check": grpc.stream_unary_rpc_method_handler(
            _bounded(guard, decoded(servicer.Check)),
            request_deserializer=_decode,
            response_serializer=serialize,
        ),
        "Watch": grpc.stream_stream_rpc_method_handler(
            _bounded(guard, decoded(servicer.Watch)),
            request_deserializer=_decode,
            response_serializer=serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, handlers),))
    server.add_registered_method_handlers(HEALTH_SERVICE, handlers)
    return servicer
