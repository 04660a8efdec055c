"""What one caller may hold on the gRPC server (design §8.7): places for calls in flight, in all
and per peer address, and the deadline for a call's request message.

Used by every service the CA serves (``SignCertificate`` and ``grpc.health.v1.Health``): each
call takes its places at its HEADERS, reads its one request message under the deadline, and
gives its places back when it ends. Everything here runs on the gRPC server's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import grpc.aio


@dataclass(frozen=True, slots=True)
class CallLimits:
    """``max_in_flight``: SignCertificate calls held at once, from their HEADERS to their answer;
    ``max_in_flight_per_peer``: calls of every service one peer address holds at once (0: no such
    limit); ``message_timeout``: seconds for a call's request message to arrive after its
    HEADERS. Past a limit: RESOURCE_EXHAUSTED; past the deadline: DEADLINE_EXCEEDED."""

    max_in_flight: int = 1024
    max_in_flight_per_peer: int = 128
    message_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Refused:
    """A call refused before its request was used: status, message, metric reason."""

    code: grpc.StatusCode
    message: str
    reason: str


class Slots:
    """Places taken by calls in flight: ``total`` (SignCertificate only) and per peer address
    (every call). A peer's entry is dropped when its last call ends, so the table holds at most
    one entry per peer with a call open."""

    def __init__(self) -> None:
        self.total = 0
        self._per_peer: dict[str, int] = {}

    def held_by(self, peer: str) -> int:
        """Calls the peer address ``peer`` holds now."""
        return self._per_peer.get(peer, 0)

    def take(self, peer: str, limits: CallLimits, *, in_total: bool) -> Refused | None:
        """Take a place for a call from ``peer`` (a host, see ``rate_limit.peer_host``), counted in
        the total when ``in_total``; None when taken, else why not (nothing taken then)."""
        if in_total and self.total >= limits.max_in_flight:
            return Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the CA holds its limit of {limits.max_in_flight} calls; retry later",
                "in_flight_limit",
            )
        per_peer = limits.max_in_flight_per_peer
        held = self._per_peer.get(peer, 0)
        if per_peer and held >= per_peer:
            return Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this caller holds its limit of {per_peer} calls in flight; retry later",
                "peer_in_flight_limit",
            )
        self._per_peer[peer] = held + 1
        if in_total:
            self.total += 1
        return None

    def give(self, peer: str, *, in_total: bool) -> None:
        """Give back the place :meth:`take` gave (same ``peer`` and ``in_total``)."""
        held = self._per_peer.get(peer, 0) - 1
        if held > 0:
            self._per_peer[peer] = held
        else:
            self._per_peer.pop(peer, None)
        if in_total:
            self.total -= 1


class Guard:
    """The limits in force (``limits``, replaced by a restart in place) and the places taken
    (``slots``), shared by every service of one gRPC server."""

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits
        self.slots = Slots()


EOF_SETTLE = 0.05  # seconds; see read_request

CANCELLED = Refused(grpc.StatusCode.CANCELLED, "the call was cancelled by the client", "cancelled")


async def read_request(context: grpc.aio.ServicerContext, timeout: float) -> object:
    """The call's one request message (as its deserializer made it), or a :class:`Refused`:
    DEADLINE_EXCEEDED when it has not fully arrived ``timeout`` seconds after this starts,
    INVALID_ARGUMENT (reason ``request_missing``) when the stream ended without one, or
    :data:`CANCELLED` when the client is known to have reset the call (not the CA's refusal:
    callers do not count it as a failure)."""
    try:
        async with asyncio.timeout(timeout):  # no task per call, unlike asyncio.wait_for
            request = await context.read()
    except TimeoutError:
        return Refused(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the request message did not arrive within {timeout:g} s of the call's start",
            "message_timeout",
        )
    if request is grpc.aio.EOF:
        # A client's RST_STREAM (or its connection's end) also ends the read with EOF; the call's
        # cancellation reaches this task a moment later (raising CancelledError here), so wait
        # that moment before calling it a refusal. Only a call that sent no message pays it.
        await asyncio.sleep(EOF_SETTLE)
        if context.cancelled():
            return CANCELLED
        return Refused(
            grpc.StatusCode.INVALID_ARGUMENT, "the call ended without a request message", "request_missing"
        )
    return request
