"""A client of the CA's gRPC API: send a CSR, verify what comes back (used by the CLI).

The CA server is authenticated with TLS against the trust anchors the caller holds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc


class VerifyError(Exception):
    """The CA's answer does not verify against the caller's trust anchors."""


@dataclass(frozen=True)
class SignedResponse:
    chain_pem: bytes
    anchors_pem: bytes
    leaf: x509.Certificate
    spiffe_id: str
    valid_until: datetime


def channel(server: str, anchors_pem: bytes, server_name: str | None = None) -> grpc.Channel:
    """A TLS channel to ``server`` (HOST:PORT) trusting only ``anchors_pem``."""
    creds = grpc.ssl_channel_credentials(root_certificates=anchors_pem)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(server, creds, options=options)


def sign(
    chan: grpc.Channel,
    csr_pem: bytes,
    app_id: str,
    namespace: str,
    *,
    trust_domain: str = "",
    token: str = "",
    token_validator: int = 0,
    timeout: float = 30.0,
) -> sentry_pb2.SignCertificateResponse:
    """Call SignCertificate; raises grpc.RpcError with the CA's status and message."""
    stub = sentry_pb2_grpc.CAStub(chan)
    req = sentry_pb2.SignCertificateRequest(
        id=app_id,
        token=token,
        trust_domain=trust_domain,
        namespace=namespace,
        certificate_signing_request=csr_pem,
        token_validator=token_validator,  # type: ignore[arg-type]
    )
    return stub.SignCertificate(req, timeout=timeout)


def _uses_ed25519(certs: list[x509.Certificate]) -> bool:
    return any(isinstance(c.public_key(), ed25519.Ed25519PublicKey) for c in certs)


def verify_response(
    response: sentry_pb2.SignCertificateResponse, anchors_pem: bytes, now: datetime | None = None
) -> SignedResponse:
    """Check that the leaf chains to one of the caller's ``anchors_pem`` and carries one SPIFFE ID.

    Uses pyca/cryptography's X.509 client verifier; for Ed25519 chains (which its Web PKI
    profile refuses) each link's signature, issuer name and validity are checked instead.
    Raises VerifyError naming the problem.
    """
    now = now or datetime.now(UTC)
    try:
        chain = x509.load_pem_x509_certificates(response.workload_certificate)
        anchors = x509.load_pem_x509_certificates(anchors_pem)
    except ValueError as e:
        raise VerifyError(f"cannot parse certificates: {e}") from None
    leaf, intermediates = chain[0], chain[1:]
    try:
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        raise VerifyError(f"the certificate carries {len(spiffe)} SPIFFE IDs, expected exactly one")
    if _uses_ed25519([*chain, *anchors]):
        _walk_chain(chain, anchors, now)
    else:
        verifier = PolicyBuilder().store(Store(anchors)).time(now).build_client_verifier()
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as e:
            raise VerifyError(f"the certificate does not verify against the trust anchors: {e}") from None
    return SignedResponse(
        response.workload_certificate,
        b"".join(response.trust_chain_certificates),
        leaf,
        spiffe[0],
        response.valid_until.ToDatetime(tzinfo=UTC),
    )


def _walk_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate], now: datetime) -> None:
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerifyError(f"certificate {cert.subject.rfc4514_string() or '(leaf)'} is not valid now")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise VerifyError("the chain is broken: a certificate is not signed by the next one") from None
    for anchor in anchors:
        try:
            chain[-1].verify_directly_issued_by(anchor)
            return
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
    raise VerifyError("the chain does not lead to any of the trust anchors")
