"""An upstream authority signs the issuer (design §5.16): the pure half of ``--upstream-authority``.

With an upstream (AWS Private CA, ``acm-pca://<CA ARN>``) the CA holds no root key: its issuer is
a subordinate CA that the upstream issues for a key generated here, and the trust anchors are the
upstream's roots. This module makes the request (:func:`issuer_request`: a fresh key, its CSR and
the validity asked for), checks what comes back (:func:`accept_issued`) and builds a first bundle
from it (:func:`upstream_bundle`). The adapter (``adapters.acm_pca``) makes the calls; the rotation
rules (``rotation.rules.advance`` with ``upstream_issuer``) take the checked issuer as rule 5's
prepared issuer. No I/O and no clock here: the caller passes ``now``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .bundle import TrustBundle, is_ca, issued_by
from .errors import BundleError, ConfigError
from .keys import KeyAlgorithm, PrivateKey, public_key_der, signature_hash
from .spiffe_id import SpiffeId

ACM_PCA_SCHEME = "acm-pca://"
# Private CA's template for a CA that may sign only end-entity certificates (our issuer).
SUBORDINATE_PATHLEN0_TEMPLATE = "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
UPSTREAM_KEY_ALGORITHMS = (KeyAlgorithm.ECDSA_P256, KeyAlgorithm.ECDSA_P384)  # what a CSR to it may hold


def parse_upstream(text: str) -> str:
    """The CA ARN of ``acm-pca://arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>``.
    Raises ValueError naming the expected shape."""
    value = text.strip()
    arn = value.removeprefix(ACM_PCA_SCHEME)
    parts = arn.split(":", 5)
    if (
        not value.startswith(ACM_PCA_SCHEME)
        or len(parts) != 6
        or parts[0] != "arn"
        or parts[2] != "acm-pca"
        or not parts[1]
        or not parts[3]
        or not (parts[4].isdigit() and len(parts[4]) == 12)
        or not parts[5].startswith("certificate-authority/")
        or not parts[5].removeprefix("certificate-authority/")
    ):
        raise ValueError(
            f"{text!r} is not acm-pca://arn:aws:acm-pca:REGION:ACCOUNT:certificate-authority/ID "
            "(the ARN of an AWS Private CA)"
        )
    return arn


def arn_region(arn: str) -> str:
    """The region field of an ARN (``arn:aws:acm-pca:eu-west-1:...`` → ``eu-west-1``)."""
    return arn.split(":")[3]


@dataclass(frozen=True)
class IssuerRequest:
    """What the CA asks its upstream for: ``key`` (generated here, never sent), ``csr_pem`` (PEM
    CSR of its public key, subject ``O=<CA's SPIFFE ID>, CN=sentryca issuer <16 hex>``), and the
    validity wanted, ``not_before``/``not_after`` (aware UTC; the upstream may end it sooner, at
    its own NotAfter)."""

    key: PrivateKey
    csr_pem: bytes
    not_before: datetime
    not_after: datetime


def issuer_request(
    ca_identity: SpiffeId,
    algorithm: KeyAlgorithm,
    now: datetime,
    *,
    lifetime: timedelta,
    backdate: timedelta,
    key: PrivateKey | None = None,
) -> IssuerRequest:
    """A new issuer key and the request for its certificate, valid ``now - backdate`` to
    ``now + lifetime``. key: the issuer key to certify (a KMS key, design §5.18: the CSR is then
    signed by KMS; every KMS key spec sentryca opens is one Private CA signs), else one of
    ``algorithm`` is generated. Raises ConfigError for a key algorithm the upstream does not sign
    (Ed25519: Private CA accepts RSA and ECDSA P-256/P-384 keys only)."""
    if key is None and algorithm not in UPSTREAM_KEY_ALGORITHMS:
        raise ConfigError(
            f"--ca-key-algorithm {algorithm.value} cannot be used with --upstream-authority: AWS Private "
            "CA signs only RSA and ECDSA P-256/P-384 keys (use ecdsa-p256 or ecdsa-p384)"
        )
    key = key if key is not None else algorithm.generate()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(ca_identity)),
            x509.NameAttribute(NameOID.COMMON_NAME, f"sentryca issuer {secrets.token_hex(8)}"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, signature_hash(key))
    return IssuerRequest(key, csr.public_bytes(serialization.Encoding.PEM), now - backdate, now + lifetime)


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and issued_by(cert, cert)


def accept_issued(
    request: IssuerRequest,
    certificate: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    now: datetime,
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """Check what the upstream answered for ``request`` and split it: (issuer chain, issuer first
    and without roots; the roots it ends at). ``chain``: the upstream's certificate chain as
    returned, in either order (Private CA returns the issuing CA first, the root last).

    The certificate must hold the request's key, be a CA with path length 0 (the subordinate
    template) and be valid now; each certificate must be signed by the next, ending at a self-signed
    root. Raises BundleError saying which check failed (nothing is to be written then)."""
    if public_key_der(certificate.public_key()) != public_key_der(request.key.public_key()):
        raise BundleError("the upstream's certificate does not hold the key the CA asked it to certify")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise BundleError("the upstream's certificate is not a CA (no basicConstraints)") from None
    if not constraints.ca or constraints.path_length != 0:
        raise BundleError(
            "the upstream's certificate is not a CA with path length 0 (is the template "
            f"{SUBORDINATE_PATHLEN0_TEMPLATE}?)"
        )
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not start <= now < end:
        raise BundleError(
            f"the upstream's certificate is not valid now (valid {start.isoformat()} to {end.isoformat()})"
        )
    rest = [c for c in chain if c != certificate]
    ordered = [certificate]
    while rest:  # follow the signatures up, whatever order the chain came in
        parent = next((c for c in rest if issued_by(ordered[-1], c)), None)
        if parent is None:
            break
        ordered.append(parent)
        rest.remove(parent)
        if _self_signed(parent):
            break
    if not _self_signed(ordered[-1]):
        raise BundleError(
            "the upstream's certificate chain does not end at a self-signed root (certificate "
            f"{ordered[-1].subject.rfc4514_string()} is not signed by any certificate it returned)"
        )
    for cert in ordered[1:]:
        if not is_ca(cert):
            raise BundleError(
                f"the upstream's chain holds a certificate that is not a CA: {cert.subject.rfc4514_string()}"
            )
    return tuple(ordered[:-1]), (ordered[-1],)


def upstream_bundle(
    request: IssuerRequest, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...], now: datetime
) -> TrustBundle:
    """A first bundle from the upstream's answer (:func:`accept_issued`): the upstream's root as
    the only trust anchor, its issuer chain, the request's key, and no root key."""
    issuer_chain, roots = accept_issued(request, certificate, chain, now)
    return TrustBundle(roots, issuer_chain, request.key)
