"""A client of the CA's gRPC API: send a CSR, verify what comes back (used by the CLI).

The CA server is authenticated with TLS against the trust anchors the caller holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sentryca_proto.sentry.v1 import sentry_pb2

if TYPE_CHECKING:  # grpc is imported when used: ``sentryca-client`` quiets gRPC core's log first
    import grpc


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
    import grpc

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
    jwt_audiences: Sequence[str] = (),
    timeout: float = 30.0,
) -> sentry_pb2.SignCertificateResponse:
    """Call SignCertificate (``jwt_audiences``: field 7, the JWT-SVIDs' audiences; ``timeout``
    in seconds); raises grpc.RpcError with the CA's status and message."""
    from sentryca_proto.sentry.v1 import sentry_pb2_grpc

    stub = sentry_pb2_grpc.CAStub(chan)
    req = sentry_pb2.SignCertificateRequest(
        id=app_id,
        token=token,
        trust_domain=trust_domain,
        namespace=namespace,
        certificate_signing_request=csr_pem,
        token_validator=token_validator,  # type: ignore[arg-type]
        jwt_audiences=list(jwt_audiences),
    )
    return stub.SignCertificate(req, timeout=timeout)


def _uses_ed25519(certs: list[x509.Certificate]) -> bool:
    return any(isinstance(c.public_key(), ed25519.Ed25519PublicKey) for c in certs)


def verify_response(
    response: sentry_pb2.SignCertificateResponse,
    anchors_pem: bytes,
    now: datetime | None = None,
    *,
    namespace: str | None = None,
    app_id: str | None = None,
    trust_domain: str | None = None,
    public_key: object | None = None,
) -> SignedResponse:
    """Check the CA's answer before anything is written.

    The leaf must chain to one of the caller's ``anchors_pem`` (pyca/cryptography's X.509 client
    verifier; for Ed25519 chains, which its Web PKI profile refuses, each link's signature,
    issuer name and validity are checked instead) and carry exactly one SPIFFE ID; when given,
    that ID's namespace, app id and trust domain must be the ones asked for and the leaf's key
    must be ``public_key`` (the CSR's). The returned trust anchors must be self-signed and
    include the anchor the chain verified to. Raises VerifyError naming the problem.
    """
    now = now or datetime.now(UTC)
    try:
        chain = x509.load_pem_x509_certificates(response.workload_certificate)
        anchors = x509.load_pem_x509_certificates(anchors_pem)
        returned = x509.load_pem_x509_certificates(b"".join(response.trust_chain_certificates))
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
    _check_identity(spiffe[0], namespace, app_id, trust_domain)
    if public_key is not None and _spki(leaf.public_key()) != _spki(public_key):
        raise VerifyError("the certificate is for another public key than the CSR's")
    if _uses_ed25519([*chain, *anchors]):
        root = _walk_chain(chain, anchors, now)
    else:
        verifier = PolicyBuilder().store(Store(anchors)).time(now).build_client_verifier()
        try:
            root = verifier.verify(leaf, intermediates).chain[-1]
        except VerificationError as e:
            raise VerifyError(f"the certificate does not verify against the trust anchors: {e}") from None
    if root not in returned:
        raise VerifyError("the trust anchors the CA returned do not include the root the chain verifies to")
    for anchor in returned:
        if anchor.subject != anchor.issuer or _not_issued_by(anchor, anchor):
            raise VerifyError("a trust anchor the CA returned is not a self-signed root")
    return SignedResponse(
        response.workload_certificate,
        b"".join(response.trust_chain_certificates),
        leaf,
        spiffe[0],
        response.valid_until.ToDatetime(tzinfo=UTC),
    )


def _check_identity(uri: str, namespace: str | None, app_id: str | None, trust_domain: str | None) -> None:
    rest = uri[len("spiffe://") :]
    td, _, path = rest.partition("/")
    expected_path = f"ns/{namespace}/{app_id}" if namespace is not None and app_id is not None else None
    if (expected_path is not None and path != expected_path) or (trust_domain and td != trust_domain):
        wanted = f"spiffe://{trust_domain or '<any trust domain>'}/{expected_path or '...'}"
        raise VerifyError(f"the certificate is for {uri}, not the identity asked for ({wanted})")


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def _not_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return True
    return False


def _walk_chain(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], now: datetime
) -> x509.Certificate:
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerifyError(f"certificate {cert.subject.rfc4514_string() or '(leaf)'} is not valid now")
    for child, parent in itertools.pairwise(chain):
        if _not_issued_by(child, parent):
            raise VerifyError("the chain is broken: a certificate is not signed by the next one")
    for anchor in anchors:
        if (
            not _not_issued_by(chain[-1], anchor)
            and anchor.not_valid_before_utc <= now <= anchor.not_valid_after_utc
        ):
            return anchor
    raise VerifyError("the chain does not lead to any of the trust anchors")
