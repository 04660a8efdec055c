"""AWS Private CA as the upstream authority (``--upstream-authority acm-pca://<CA ARN>``, design
§5.16): the calls, their bounded retries and what their errors tell the operator.

:meth:`AcmPcaAuthority.issue_issuer` asks Private CA for the CA's issuer: ``GetCertificateAuthority
Certificate`` (the CA's certificate and chain: its NotAfter bounds the validity asked for, its key
picks the signing algorithm), ``IssueCertificate`` with the path-length-0 subordinate template and
an idempotency token (a retried call never issues twice), then ``GetCertificate`` polled until the
certificate is issued. Throttling, 5xx and unreachable endpoints are retried with exponential
backoff and full jitter, a bounded number of times, on top of the SDK's own retries (or instead of
them: :func:`bounded_authority`, what ``--upstream-timeout``/``--upstream-max-attempts`` build); a
certificate still pending at the bound raises :class:`UpstreamPending` with its ARN, so the next
attempt polls the same certificate instead of asking for another. Every failure is a ``CAError`` whose message
says what to do; the caller (a start, the upkeep, ``rotate issuer``) decides what it means for the
CA (the upkeep keeps serving the issuer in force).

IAM: ``acm-pca:IssueCertificate``, ``acm-pca:GetCertificate`` and
``acm-pca:GetCertificateAuthorityCertificate`` on the CA's ARN, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca_core.errors import CAError, ConfigError, PermissionDenied, Unavailable
from ca_core.upstream import SUBORDINATE_PATHLEN0_TEMPLATE, IssuerRequest, arn_region, parse_upstream

from . import aws

log = logging.getLogger("sentryca")

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "LimitExceededException",
        "RequestLimitExceeded",
    }
)
PENDING_CODE = "RequestInProgressException"
DENIED_CODES = aws.DENIED_CODES
STATE_CODES = frozenset({"InvalidStateException"})


class UpstreamPending(Unavailable):
    """Private CA has not issued the certificate yet; ``certificate_arn``: poll this one again."""

    reason = "upstream_pending"

    def __init__(self, message: str, certificate_arn: str) -> None:
        super().__init__(message)
        self.certificate_arn = certificate_arn


@dataclass(frozen=True)
class Backoff:
    """Bounded retries: ``attempts`` tries of one call in all, the wait before try n+1 drawn from
    [0, min(cap, base * 2**n)) seconds (full jitter); ``polls``: GetCertificate answers
    "pending" accepted before giving up for now, waiting ``poll_base * 2**n`` seconds (at most
    ``cap``) between them."""

    attempts: int = 4
    base: float = 1.0
    polls: int = 6
    poll_base: float = 0.5
    cap: float = 8.0


class AcmPcaAuthority:
    """An AWS Private CA that signs the CA's issuers. ``upstream``: ``acm-pca://<CA ARN>``;
    ``client``: an acm-pca SDK client (default: :func:`adapters.aws.client` in the ARN's region,
    with ``timeout`` seconds to connect and as many to read each answer, and ``sdk_attempts``
    requests per try; None: the SDK's defaults); ``sleep``/``random``: injectable for tests."""

    def __init__(
        self,
        upstream: str,
        *,
        client: Any = None,
        backoff: Backoff = Backoff(),
        timeout: float | None = None,
        sdk_attempts: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.ca_arn = parse_upstream(upstream)
        self.description = upstream
        self._client = client
        self._backoff = backoff
        self._timeout = timeout
        self._sdk_attempts = sdk_attempts
        self._sleep = sleep
        self._random = random

    @property
    def client(self) -> Any:
        if self._client is None:
            timeouts = (
                {}
                if self._timeout is None
                else {"connect_timeout": self._timeout, "read_timeout": self._timeout}
            )
            self._client = aws.client(
                "acm-pca", region=arn_region(self.ca_arn), max_attempts=self._sdk_attempts, **timeouts
            )
        return self._client

    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        """``GetCertificateAuthorityCertificate``: the CA's certificate, then its chain (none for
        a root CA). Raises the errors of :meth:`_call`."""
        answer = self._call("GetCertificateAuthorityCertificate", CertificateAuthorityArn=self.ca_arn)
        pem = (answer.get("Certificate") or "") + "\n" + (answer.get("CertificateChain") or "")
        return self._certificates(pem, "GetCertificateAuthorityCertificate")

    def issue_issuer(
        self,
        request: IssuerRequest,
        *,
        resume: str | None = None,
        expect_root: x509.Certificate | None = None,
        issued: Callable[[str], None] | None = None,
        outlive: datetime | None = None,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """The issuer certificate for ``request`` and the chain above it (issuing CA first, root
        last), as Private CA returns them. ``resume``: the certificate ARN of an earlier call that
        was still pending (polled instead of a new IssueCertificate); ``expect_root``: the root the
        issuer must chain to (the bundle's): another one is refused before anything is issued
        (CAError ``upstream_other_root``); ``issued``: called with the new certificate's ARN as
        soon as IssueCertificate answers, before it is polled, so that a poll that then fails
        (throttled, unreachable, denied) leaves the caller able to resume it; ``outlive``: the
        NotAfter the new issuer must end after (the current issuer's): one that Private CA's own
        NotAfter would cut to no later is refused before anything is issued (CAError
        ``upstream_invalid_state``). Raises UpstreamPending
        (still pending after the bounded polls), Unavailable (throttled or unreachable after the
        bounded retries), PermissionDenied (access denied), CAError (the CA's state, or a refusal)."""
        arn = resume
        if arn is None:
            arn = self._issue(request, expect_root, outlive)
            if issued is not None:
                issued(arn)
        answer = self._poll(arn)
        certificate = self._certificates(answer.get("Certificate") or "", "GetCertificate")[0]
        chain = self._certificates(answer.get("CertificateChain") or "", "GetCertificate")
        return certificate, chain

    def _issue(
        self, request: IssuerRequest, expect_root: x509.Certificate | None, outlive: datetime | None
    ) -> str:
        chain = self.ca_chain()
        ca, top = chain[0], chain[-1]
        if expect_root is not None and top != expect_root:
            raise CAError(
                f"{self.description} chains to {top.subject.rfc4514_string()}, not to the bundle's active "
                f"root {expect_root.subject.rfc4514_string()}: its issuers would not verify for the "
                "workloads; nothing was issued (move the CA to the Private CA's hierarchy with `sentryca "
                "bundle import`, both roots as anchors, or unset --upstream-authority)",
                reason="upstream_other_root",
            )
        not_after = min(request.not_after, ca.not_valid_after_utc)
        not_before = max(request.not_before, ca.not_valid_before_utc)
        if outlive is not None and not_after <= outlive:
            raise CAError(
                f"{self.description} would sign an issuer only until {not_after.isoformat()} (its own "
                f"certificate ends at {ca.not_valid_after_utc.isoformat()}), no later than the current "
                f"issuer ({outlive.isoformat()}): nothing was issued; renew the Private CA's certificate, "
                "or move the CA to another Private CA with `sentryca bundle import`, before the current "
                "issuer expires",
                reason="upstream_invalid_state",
            )
        answer = self._call(
            "IssueCertificate",
            CertificateAuthorityArn=self.ca_arn,
            Csr=request.csr_pem,
            SigningAlgorithm=_signing_algorithm(ca),
            TemplateArn=SUBORDINATE_PATHLEN0_TEMPLATE,
            Validity={"Type": "ABSOLUTE", "Value": int(not_after.timestamp())},
            ValidityNotBefore={"Type": "ABSOLUTE", "Value": int(not_before.timestamp())},
            # the same request retried (throttled, a lost answer) is one certificate, never two
            IdempotencyToken=base64.b32encode(hashlib.sha256(request.csr_pem).digest()).decode()[:36],
        )
        arn = str(answer["CertificateArn"])
        log.info("asked %s for a new issuer certificate: %s", self.description, arn)
        return arn

    def _poll(self, certificate_arn: str) -> dict[str, Any]:
        b = self._backoff
        for n in range(b.polls + 1):
            try:
                return self._call(
                    "GetCertificate", CertificateAuthorityArn=self.ca_arn, CertificateArn=certificate_arn
                )
            except _Pending:
                if n == b.polls:
                    break
                self._sleep(min(b.cap, b.poll_base * 2**n))
        raise UpstreamPending(
            f"{self.description} has not issued the issuer certificate {certificate_arn} yet (still "
            f"pending after {b.polls + 1} polls); it is polled again at the next attempt, and the CA "
            "keeps serving its current issuer",
            certificate_arn,
        )

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One API call with bounded backoff on throttling and transient faults."""
        method = getattr(self.client, _snake(operation))
        b = self._backoff
        for n in range(b.attempts):
            try:
                return dict(method(**params))
            except aws.sdk_errors() as e:
                error = self._error(e, operation)
                if error is None:
                    raise _Pending() from None
                if not isinstance(error, _Retryable):
                    raise error from None
                if n + 1 == b.attempts:
                    each = "" if self._sdk_attempts == 1 else " (with the SDK's own retries each)"
                    raise Unavailable(
                        f"{error.message} {b.attempts} times{each}, backing off between them; the CA "
                        "keeps serving its current issuer and tries again at the next attempt",
                        reason=error.reason,
                    ) from None
                delay = self._random() * min(b.cap, b.base * 2**n)
                log.warning("%s; retrying in %.1f s", error.message, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, e: Exception, operation: str) -> CAError | None:
        """What an SDK error means (None: the certificate is pending)."""
        from botocore import exceptions as bex

        where = f"{self.description}: {operation}"
        if isinstance(e, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
            return PermissionDenied(f"{where}: no usable AWS credentials ({e})", reason="upstream_denied")
        if isinstance(e, bex.ClientError):
            code, status = aws.error_code(e), aws.http_status(e)
            message = e.response.get("Error", {}).get("Message", "")
            if code == PENDING_CODE:
                return None
            if code in DENIED_CODES or status == 403:
                return PermissionDenied(
                    f"{where} was denied ({code}: {message}): the CA's role needs acm-pca:IssueCertificate, "
                    "acm-pca:GetCertificate and acm-pca:GetCertificateAuthorityCertificate on "
                    f"{self.ca_arn}",
                    reason="upstream_denied",
                )
            if code in STATE_CODES:
                return CAError(
                    f"{where}: the Private CA cannot issue now ({code}: {message}); it must be ACTIVE "
                    "(not disabled, expired or waiting for its own certificate): check it with "
                    f"`aws acm-pca describe-certificate-authority --certificate-authority-arn {self.ca_arn}`",
                    reason="upstream_invalid_state",
                )
            if code == "ResourceNotFoundException":
                return ConfigError(
                    f"{where}: no such Private CA or certificate ({message}); check --upstream-authority"
                )
            if code in THROTTLING_CODES or status == 429:
                return _Retryable(
                    f"{where}: throttled by AWS Private CA ({code})", reason="upstream_throttled"
                )
            if status >= 500:
                return _Retryable(
                    f"{where}: AWS Private CA answered {code or status}", reason="upstream_unreachable"
                )
            return CAError(f"{where} was refused ({code}: {message})", reason="upstream_refused")
        if isinstance(e, bex.BotoCoreError):
            return _Retryable(f"{where}: cannot reach AWS Private CA ({e})", reason="upstream_unreachable")
        return CAError(f"{where}: {e}", reason="upstream_refused")  # pragma: no cover - sdk_errors only

    def _certificates(self, pem: str, operation: str) -> tuple[x509.Certificate, ...]:
        try:
            certs = tuple(x509.load_pem_x509_certificates(pem.encode()))
        except ValueError:
            certs = ()
        if not certs:
            raise CAError(
                f"{self.description}: {operation} returned no certificate", reason="upstream_refused"
            )
        return certs


def bounded_authority(
    upstream: str, timeout: float, attempts: int, *, polls: int = Backoff.polls, cap: float = Backoff.cap
) -> AcmPcaAuthority:
    """The adapter as ``--upstream-timeout``/``--upstream-max-attempts`` bound it: each call tried
    ``attempts`` times in all, each try one request (the SDK's own retries off: this adapter's
    backoff, with full jitter, makes them) given ``timeout`` seconds to connect and as many to
    read. A call then ends within ``attempts`` x 2 x ``timeout`` seconds plus the waits between
    tries (each below ``cap``); ``polls`` GetCertificate answers "pending" are accepted before
    :class:`UpstreamPending`."""
    return AcmPcaAuthority(
        upstream,
        backoff=Backoff(attempts=attempts, polls=polls, cap=cap),
        timeout=timeout,
        sdk_attempts=1,
    )


class _Pending(Exception):
    """GetCertificate: RequestInProgressException."""


class _Retryable(Unavailable):
    """Throttled or unreachable: worth another try after a wait."""

    @property
    def message(self) -> str:
        return str(self)


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


def _signing_algorithm(ca: x509.Certificate) -> str:
    """Private CA's SigningAlgorithm for its own key: SHA-256 (SHA-384 for P-384/P-521) with its type."""
    key = ca.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "SHA384WITHECDSA" if key.curve.key_size >= 384 else "SHA256WITHECDSA"
    if isinstance(key, rsa.RSAPublicKey):
        return "SHA256WITHRSA"
    raise ConfigError(f"the Private CA's key is neither RSA nor ECDSA ({type(key).__name__})")
