"""The gRPC ``dapr.proto.sentry.v1.CA`` service: decode, call the core, map errors (design §2–§3).

The one place where core errors become gRPC status codes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from ca_core.errors import CAError, FailedPrecondition, InvalidRequest, PermissionDenied, Unavailable
from ca_core.validators import SignRequest
from sentryca_proto.sentry.v1 import sentry_pb2

from . import log_limit
from .call_limits import CANCELLED, CallLimits, Guard, Refused, read_request
from .log_limit import sanitised
from .rate_limit import RateLimiter, peer_host

if TYPE_CHECKING:
    from datetime import datetime

    from ca_core.service import SignedCertificate, Signer
    from ca_core.validators import Identity, Validator

    from .metrics import Metrics

log = logging.getLogger(__name__)
audit_log = logging.getLogger("sentryca.audit")

CALL_ID_TRAILER = "sentryca-call-id"
# How long a call waits for a signature by an issuer key in KMS (design §5.18), seconds: a KMS
# Sign takes milliseconds; past this the CA answers UNAVAILABLE rather than hold the call.
REMOTE_SIGN_TIMEOUT = 5.0

STATUS_FOR: dict[type[CAError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


CATEGORY_FOR: dict[type[CAError], str] = {
    InvalidRequest: "invalid_request",
    PermissionDenied: "permission_denied",
    Unavailable: "unavailable",
    FailedPrecondition: "issuer_invalid",
}


def category_for(error: CAError) -> str:
    """The coarse failure category (a metrics label, see handlers.metrics.CATEGORIES)."""
    for cls, category in CATEGORY_FOR.items():
        if isinstance(error, cls):
            return category
    return "internal"


def status_for(error: CAError) -> grpc.StatusCode:
    """The gRPC status code for a core error (INTERNAL for anything unmapped)."""
    for cls, code in STATUS_FOR.items():
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


MAX_DETAILS = 2000  # characters of a status message


def bounded(message: str) -> str:
    """``message`` cut to MAX_DETAILS characters. Refusals may quote the caller's input; unbounded,
    the status message (sent as the grpc-message trailer) could exceed the client's metadata
    limit, and the client would see RESOURCE_EXHAUSTED instead of the CA's status."""
    if len(message) <= MAX_DETAILS:
        return message
    return message[: MAX_DETAILS - 20] + f"… ({len(message)} chars)"


def decode_request(decoded: Decoded) -> SignRequest:
    """The wire message as the core's SignRequest (token_validator kept as its raw number)."""
    msg = decoded.message
    return SignRequest(
        app_id=msg.id,
        namespace=msg.namespace,
        csr_pem=msg.certificate_signing_request,
        trust_domain=msg.trust_domain,
        token=msg.token,
        token_validator=decoded.token_validator,
        jwt_audiences=tuple(msg.jwt_audiences),
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded ``SignCertificateRequest`` and its ``token_validator`` as the number on the wire.
    protobuf keeps only an enum's low 32 bits (2^32 would read as 0, the default validator), so
    the number is read from the bytes and any that is not an int32 stays unknown (design §3.1)."""

    message: sentry_pb2.SignCertificateRequest
    token_validator: int


class Undecodable:
    """Stands for a request message that is not a valid ``SignCertificateRequest`` (e.g. a
    string field that is not UTF-8), so the servicer can refuse it with a defined status
    instead of gRPC's default INTERNAL "Exception deserializing request"."""


TOKEN_VALIDATOR_FIELD = sentry_pb2.SignCertificateRequest.TOKEN_VALIDATOR_FIELD_NUMBER


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def wire_token_validator(data: bytes) -> int | None:
    """The last top-level varint of field ``token_validator`` in ``data`` (the one protobuf keeps),
    as an int32 when it is one (negative numbers are sent sign-extended to 64 bits), else the
    unsigned number as sent; 0 when absent; None when ``data`` does not scan."""
    found = 0
    pos, depth = 0, 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                value, pos = _varint(data, pos)
                if number == TOKEN_VALIDATOR_FIELD and depth == 0:
                    found = value
            elif wire_type == 1:
                pos += 8
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire_type == 3:
                depth += 1
            elif wire_type == 4:
                depth -= 1
            elif wire_type == 5:
                pos += 4
            else:
                return None
    except IndexError:
        return None
    if pos != len(data):
        return None
    if 2**64 - 2**31 <= found < 2**64:
        return found - 2**64
    return found


def decode_message(data: bytes) -> Decoded | Undecodable:
    try:
        message = sentry_pb2.SignCertificateRequest.FromString(data)
    except DecodeError:
        return Undecodable()
    token_validator = wire_token_validator(data)
    if token_validator is None:
        return Undecodable()
    return Decoded(message, token_validator)


SERVICE = "dapr.proto.sentry.v1.CA"


def add_to_server(servicer: CAServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as ``dapr.proto.sentry.v1.CA`` on a ``grpc.aio`` server.

    The method is registered as request-streaming, with :func:`decode_message` as the request
    deserializer: on the wire a unary call is the same stream (one message, then end of stream),
    and reading that message in the handler is what lets it be given a deadline
    (``message_timeout``) and counted against the in-flight limits while it arrives (design §8.7)."""
    handlers = {
        "SignCertificate": grpc.stream_unary_rpc_method_handler(
            servicer.SignCertificate,
            request_deserializer=decode_message,
            response_serializer=sentry_pb2.SignCertificateResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


Refusal = tuple[grpc.StatusCode, str]


class CAServicer:
    """Serves SignCertificate with whatever signer ``current_signer()`` returns at call time,
    so a restart can swap bundle, validators and settings without touching the server.

    Runs on the gRPC server's event loop. A validator that does I/O (``performs_io``, true
    unless it says otherwise) runs in ``io_executor``, a bounded thread pool; signing itself
    (CSR checks, certificate build, one ECDSA signature: about 0.2 ms) runs inline on the loop,
    except with an issuer key in KMS (a network call per signature, design §5.18): then it runs
    in ``io_executor`` too, and a signature not made within ``remote_sign_timeout`` seconds is
    UNAVAILABLE (reason ``kms_timeout``).

    ``limiter`` buckets calls by peer address (design §3.1 step 0b); ``identity_limiter`` by the
    SPIFFE ID a validator proved (step 3b), so one workload cannot use up the budget of an address
    it shares with others (a node, a NAT, a proxy that hides client addresses)."""

    def __init__(
        self,
        current_signer: Callable[[], Signer],
        clock: Callable[[], datetime],
        metrics: Metrics,
        limiter: RateLimiter | None = None,
        *,
        identity_limiter: RateLimiter | None = None,
        io_executor: Executor | None = None,
        guard: Guard | None = None,
        remote_sign_timeout: float | None = None,
    ) -> None:
        self._current_signer = current_signer
        self._clock = clock
        self._metrics = metrics
        self._limiter = limiter
        self._identity_limiter = identity_limiter
        self._io = io_executor
        self._remote_sign_timeout = (
            REMOTE_SIGN_TIMEOUT if remote_sign_timeout is None else remote_sign_timeout
        )
        self.guard = guard or Guard(CallLimits())  # read and written on the event loop only
        log_limit.LIMIT.on_suppressed = metrics.log_lines_suppressed.inc

    async def SignCertificate(self, _requests, context: grpc.aio.ServicerContext):
        """Answer one call. Every call gets a call id (logged with each line about the call and sent
        back as the ``sentryca-call-id`` trailer); every issuance writes one audit record."""
        started = time.perf_counter()
        call_id = secrets.token_hex(8)
        context.set_trailing_metadata(((CALL_ID_TRAILER, call_id),))
        self._metrics.sign_received.inc()
        code = grpc.StatusCode.OK
        peer = peer_host(context.peer())
        outcome: Refusal | SignedCertificate
        observed = False

        def observe(code: grpc.StatusCode) -> None:
            nonlocal observed
            if not observed:
                observed = True
                self._metrics.sign_latency.labels(code=code.name).observe(time.perf_counter() - started)

        refused = self.guard.slots.take(peer, self.guard.limits, in_total=True)
        try:
            if refused is not None:
                self._metrics.count_failure("rate_limited", refused.reason)
                outcome = (refused.code, refused.message)
            else:
                outcome = await self._answer(context, call_id, peer)
            if isinstance(outcome, tuple):
                code, message = outcome
                observe(code)  # before the client can have its answer
                await context.abort(code, message)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if refused is None:
                self.guard.slots.give(peer, in_total=True)
            observe(code)
        result = outcome
        self._metrics.sign_success.inc()
        if result.rule:
            self._metrics.rule_matches.labels(validator=result.validator, rule=result.rule).inc()
        audit_issued(result, call_id=call_id, peer=context.peer())
        response = sentry_pb2.SignCertificateResponse(
            workload_certificate=result.chain_pem,
            trust_chain_certificates=[result.anchors_pem],
        )
        response.valid_until.FromDatetime(result.not_after)
        if result.jwts is not None:  # fields 4 and 5 as Dapr's Sentry 1.18 fills them; else unset
            response.jwt.value = result.jwts.jwt
            for audience, token in result.jwts.per_audience.items():
                response.per_audience_jwts[audience].value = token
            self._metrics.jwt_issued.inc(result.jwts.count)
        return response

    async def _answer(
        self, context: grpc.aio.ServicerContext, call_id: str, peer: str
    ) -> Refusal | SignedCertificate:
        """The signed certificate, or the refusal (status code, message); counts failures."""
        if self._limiter is not None and not self._limiter.allow(peer):
            self._metrics.count_failure("rate_limited", "rate_limited")
            return (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests from this caller; retry later")
        request = await read_request(context, self.guard.limits.message_timeout)
        if isinstance(request, Refused):
            if request is not CANCELLED:  # a reset by the client is not the CA's refusal
                self._metrics.count_failure("invalid_request", request.reason)
            return (request.code, request.message)
        if not isinstance(request, Decoded):  # Undecodable: see decode_message
            self._metrics.count_failure("invalid_request", "request_undecodable")
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is not a valid SignCertificateRequest message",
            )
        try:
            return await self._sign(decode_request(request), call_id)
        except CAError as e:
            return self._refused(e, request, context, call_id)
        except Exception:
            self._metrics.count_failure("internal", "internal")
            if log_limit.LIMIT.allow(peer):  # a CA bug: its traceback is kept
                log.exception("sign request failed unexpectedly", extra={"call_id": call_id})
            return (grpc.StatusCode.INTERNAL, f"internal error (call id {call_id})")

    async def _sign(self, req: SignRequest, call_id: str) -> Refusal | SignedCertificate:
        signer = self._current_signer()
        validator = signer.select_validator(req.token_validator)
        if self._io is None or not getattr(validator, "performs_io", True):
            validator, identity = signer.prove(req)
        else:
            loop = asyncio.get_running_loop()
            validator, identity = await loop.run_in_executor(self._io, signer.prove, req)
        limiter = self._identity_limiter
        if limiter is not None and limiter.rate > 0 and not limiter.allow(str(identity.spiffe_id)):
            self._metrics.count_failure("rate_limited", "identity_rate_limited")
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many requests for {identity.spiffe_id}; retry later (call id {call_id})",
            )
        now = self._clock()
        if self._io is None or signer.issuer_key_uri is None:
            return signer.sign_proven(req, validator, identity, now)
        return await self._sign_remotely(signer, req, validator, identity, now)

    async def _sign_remotely(
        self, signer: Signer, req: SignRequest, validator: Validator, identity: Identity, now: datetime
    ) -> SignedCertificate:
        """``sign_proven`` in the I/O pool, never on the loop, for an issuer key in KMS (design
        §5.18): the loop (and the health service on it) keeps answering while KMS is slow. Raises
        Unavailable: KMS's errors as the adapter names them (``kms_unreachable``, ``kms_denied``,
        ``kms_key_disabled``, ``kms_key_invalid``), ``kms_timeout`` past the timeout (the thread
        finishes on its own, bounded by the SDK's timeouts, and its answer is dropped)."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._io, signer.sign_proven, req, validator, identity, now)
        try:
            return await asyncio.wait_for(work, self._remote_sign_timeout)
        except TimeoutError:
            raise Unavailable(
                f"the issuer key {signer.issuer_key_uri} did not sign within {self._remote_sign_timeout:g} s "
                "(KMS slow or unreachable); retry later",
                reason="kms_timeout",
            ) from None

    def _refused(
        self, e: CAError, request: Decoded, context: grpc.aio.ServicerContext, call_id: str
    ) -> Refusal:
        code = status_for(e)
        message = bounded(str(e))
        self._metrics.count_failure(category_for(e), e.reason)
        level = (
            logging.ERROR
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
            else logging.INFO
        )
        if log_limit.LIMIT.allow(peer_host(context.peer())):
            log.log(
                level,
                "sign request refused: %s: %s",
                code.name,
                sanitised(message, log_limit.MAX_LINE),
                extra={
                    "call_id": call_id,
                    "reason": e.reason,
                    "peer": sanitised(context.peer()),
                    "app_id": sanitised(request.message.id),
                    "namespace": sanitised(request.message.namespace),
                },
            )
        return code, message


def audit_issued(result: SignedCertificate, *, call_id: str | None, peer: str | None) -> None:
    """One audit record (logger ``sentryca.audit``) for an issued certificate: event, serial (hex),
    spiffe_id, validator (and validator_rule: the JWKS issuer rule that matched), peer address,
    not_after (ISO 8601 UTC), call_id, and with JWT-SVIDs jwt_ids (the ``jti`` of each token,
    comma-separated, ``jwt``'s first). Never the CSR, a token or a signed header."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    audit_log.info(
        "issued certificate serial %x for %s%s",
        result.certificate.serial_number,
        result.spiffe_id,
        f" ({result.validator} rule {result.rule})" if result.rule else "",
        extra={
            "event": "certificate_issued",
            "serial": f"{result.certificate.serial_number:x}",
            "spiffe_id": str(result.spiffe_id),
            "validator": result.validator or "self",
            **({"validator_rule": result.rule} if result.rule else {}),
            "peer": peer,
            "not_after": result.not_after.isoformat(),
            "call_id": call_id,
            **({"jwt_ids": ",".join(result.jwts.jtis)} if result.jwts is not None else {}),
        },
    )
