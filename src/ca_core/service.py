"""Signing a request end to end (design §3): pick the validator, prove the identity, protect the
CA's own identity, parse the CSR, sign, and shape the response. Pure given ``now``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .bundle import TrustBundle
from .certs import DEFAULT_CLOCK_SKEW, DEFAULT_WORKLOAD_TTL, IpAddress, WorkloadSigner
from .csr import csr_public_key
from .errors import InvalidRequest, PermissionDenied
from .jwt_svid import IssuedJwts, JwtIssuer, audience_problem
from .keys import PublicKey
from .spiffe_id import SpiffeId
from .validators import Identity, SignRequest, TokenValidatorKind, Validator

CA_APP_ID = "dapr-sentry"


def control_plane_dns_names(app_id: str, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """The DNS SANs Dapr gives its control-plane services in the CA's namespace (design §3.4);
    ``cluster_domain``: the Kubernetes cluster domain of the scheduler's names (``cluster.local``)."""
    if app_id == "dapr-injector":
        return (f"dapr-sidecar-injector.{namespace}.svc",)
    if app_id == "dapr-operator":
        return (f"dapr-webhook.{namespace}.svc",)
    if app_id == "dapr-scheduler":
        return tuple(
            f"dapr-scheduler-server-{i}.dapr-scheduler-server.{namespace}.svc.{cluster_domain}"
            for i in range(3)
        )
    return ()


@dataclass(frozen=True)
class SignedCertificate:
    """The answer to a sign request: ``certificate`` (the leaf), ``chain_pem`` (leaf then issuer
    chain, PEM), ``anchors_pem`` (every trust anchor, PEM), ``not_after`` (leaf NotAfter, UTC),
    ``validator``: the name of the validator that proved the identity ("" when the CA issued to
    itself), for the audit record; ``jwts``: the JWT-SVIDs (response fields 4 and 5), None when
    JWT issuance is off."""

    certificate: x509.Certificate
    chain_pem: bytes
    anchors_pem: bytes
    not_after: datetime
    spiffe_id: SpiffeId
    validator: str = ""
    jwts: IssuedJwts | None = None
    rule: str = ""  # the validator's rule that proved the identity (a JWKS issuer rule), or ""


@dataclass(frozen=True)
class SigningPolicy:
    """What the operator configured for issuance.

    trust_domain: the CA's (control-plane) trust domain; namespace: the CA's namespace;
    workload_ttl: leaf lifetime (capped by the issuer's NotAfter); clock_skew: backdating of NotBefore;
    cluster_domain: the Kubernetes cluster domain of the scheduler's DNS SANs (design §3.4), None for
    the trust domain (Dapr's Sentry's fallback).
    """

    trust_domain: str = "localhost"
    namespace: str = "default"
    workload_ttl: timedelta = DEFAULT_WORKLOAD_TTL
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    cluster_domain: str | None = None

    @property
    def dns_cluster_domain(self) -> str:
        """The domain the scheduler's DNS SANs end in: ``cluster_domain``, else the trust domain."""
        return self.cluster_domain or self.trust_domain

    @property
    def ca_identity(self) -> SpiffeId:
        """The CA's own SPIFFE ID ``spiffe://<trust domain>/ns/<namespace>/dapr-sentry``."""
        return SpiffeId(self.trust_domain, self.namespace, CA_APP_ID)


@dataclass(frozen=True)
class Signer:
    """Signs requests with one bundle, one set of validators and one policy (immutable).

    validators: wire kind → validator (the enabled ones); default_validator: used when the
    request's token_validator is 0, or None when requests must name one; jwt: signs the
    JWT-SVIDs of each answer (``--jwt-enabled``), None when they are not issued.
    """

    bundle: TrustBundle
    policy: SigningPolicy
    validators: Mapping[TokenValidatorKind, Validator] = field(default_factory=dict)
    default_validator: TokenValidatorKind | None = None
    jwt: JwtIssuer | None = None

    @cached_property
    def issuer_key_uri(self) -> str | None:
        """Where the issuer key lives when a service holds it (``kms://...``: each signature is a
        network call, design §5.18), else None (it signs in memory)."""
        return self.bundle.issuer_key_uri

    @cached_property
    def _workload_signer(self) -> WorkloadSigner:
        return WorkloadSigner(self.bundle.issuer, self.bundle.issuer_key)

    def select_validator(self, requested: int) -> Validator:
        """design §3 step 1. Raises InvalidRequest when none resolves, or it is unknown / not enabled."""
        kind_number = requested or (self.default_validator or 0)
        if not kind_number:
            raise InvalidRequest("a validator name must be specified", reason="validator_missing")
        try:
            kind = TokenValidatorKind(kind_number)
        except ValueError:
            raise InvalidRequest(
                f"unknown token validator {kind_number}", reason="validator_unknown"
            ) from None
        validator = self.validators.get(kind)
        if validator is None or kind is TokenValidatorKind.UNKNOWN:
            enabled = ", ".join(k.name for k in self.validators) or "none"
            raise InvalidRequest(
                f"token validator {kind.name} is not enabled on this CA (enabled: {enabled})",
                reason="validator_not_enabled",
            )
        return validator

    def sign(self, request: SignRequest, now: datetime) -> SignedCertificate:
        """Run design §3 steps 1–6 for ``request`` at ``now`` (aware UTC).

        Raises InvalidRequest (validator choice, CSR bytes), PermissionDenied (identity),
        Unavailable (identity backend), FailedPrecondition (issuer not valid now).
        """
        validator, identity = self.prove(request)
        return self.sign_proven(request, validator, identity, now)

    def prove(self, request: SignRequest) -> tuple[Validator, Identity]:
        """design §3 steps 1–3: the chosen validator and the identity it proved (not reserved).
        Raises as :meth:`sign` does for those steps."""
        validator = self.select_validator(request.token_validator)
        identity = validator.validate(request)
        self._check_not_reserved(identity)
        return validator, identity

    def sign_proven(
        self, request: SignRequest, validator: Validator, identity: Identity, now: datetime
    ) -> SignedCertificate:
        """design §3 steps 4–6 for an identity :meth:`prove` returned: the CSR's key, signed,
        and with JWT issuance on, the JWT-SVIDs, signed only once the certificate is (``exp``
        capped at its NotAfter). Raises InvalidRequest (CSR bytes, ``jwt_audiences``) or
        FailedPrecondition (issuer not valid now, a JWT that cannot be signed): never a partial
        answer."""
        public_key = csr_public_key(request.csr_pem)
        if self.jwt is not None and (problem := audience_problem(request.jwt_audiences)):
            raise InvalidRequest(problem, reason="jwt_audiences")
        signed = replace(
            self.issue(public_key, identity, now), validator=validator.kind.name.lower(), rule=identity.rule
        )
        if self.jwt is None:
            return signed
        sid = signed.spiffe_id
        jwts = self.jwt.issue(str(sid), sid.trust_domain, request.jwt_audiences, now, signed.not_after)
        return replace(signed, jwts=jwts)

    def _check_not_reserved(self, identity: Identity) -> None:
        sid = identity.spiffe_id
        if sid.app_id == CA_APP_ID and sid.namespace == self.policy.namespace:
            raise PermissionDenied(
                f"{sid}: {CA_APP_ID} in the CA's namespace {sid.namespace!r} is reserved for the CA's own "
                "identity and cannot be requested",
                reason="reserved_identity",
            )

    def issue(
        self,
        public_key: PublicKey,
        identity: Identity,
        now: datetime,
        *,
        ttl: timedelta | None = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[IpAddress, ...] = (),
    ) -> SignedCertificate:
        """Sign ``public_key`` for a proven ``identity`` (no validator or reservation check:
        callers are the CA itself or :meth:`sign`). Control-plane ids in the CA's namespace
        get Dapr's DNS SANs (the scheduler's under ``policy.dns_cluster_domain``). Raises
        FailedPrecondition when the issuer is not valid now."""
        sid = identity.spiffe_id
        if sid.namespace == self.policy.namespace:
            dns_names = (
                *control_plane_dns_names(sid.app_id, sid.namespace, self.policy.dns_cluster_domain),
                *dns_names,
            )
        cert = self._workload_signer.sign(
            public_key,
            sid,
            now,
            ttl=self.policy.workload_ttl if ttl is None else ttl,
            clock_skew=self.policy.clock_skew,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        chain_pem = cert.public_bytes(serialization.Encoding.PEM) + self.bundle.issuer_chain_pem
        return SignedCertificate(cert, chain_pem, self.bundle.anchors_pem, cert.not_valid_after_utc, sid)
