"""Parsing and checking certificate signing requests (design §3 step 4; RFC 2986).

Only the CSR's public key is used: its subject, SANs and requested extensions are ignored.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import PublicKeyAlgorithmOID, SignatureAlgorithmOID

from .errors import InvalidRequest
from .keys import PublicKey, describe_public_key

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys only cost verification time; no workload needs them
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_CSR_PEM_TYPES = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
_LEGACY_PEM_TYPE = b"CERTIFICATE"


def _reject(message: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"invalid CSR: {message}", reason=reason)


def parse_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse one PEM CSR and check it; returns the CSR (see :func:`csr_public_key` for the rules)."""
    return _parse_checked(pem)[0]


def csr_public_key(pem: bytes) -> PublicKey:
    """The public key of a checked PEM CSR: the only part of a CSR the CA uses.

    pem: bytes holding exactly one PEM block of type ``CERTIFICATE REQUEST`` (also
    ``NEW CERTIFICATE REQUEST``, and the legacy type ``CERTIFICATE`` holding a CSR).
    Raises InvalidRequest (reason ``csr_*``) when it is empty, not PEM, of another PEM type,
    not parseable, has a bad self-signature, or a key that is not ECDSA P-256/P-384,
    Ed25519 or RSA 2048–8192 bits (RFC 2986 §4), an RSA key restricted to RSASSA-PSS included.
    """
    return _parse_checked(pem)[1]


def _parse_checked(pem: bytes) -> tuple[x509.CertificateSigningRequest, PublicKey]:
    if not pem:
        raise _reject("the certificate_signing_request field is empty", "csr_empty")
    begins = _PEM_BEGIN.findall(pem)
    if not begins:
        raise _reject("not PEM (no '-----BEGIN ...-----' line)", "csr_not_pem")
    if len(begins) > 1:
        raise _reject(f"expected one PEM block, found {len(begins)}", "csr_not_pem")
    pem_type = begins[0]
    if pem_type == _LEGACY_PEM_TYPE:
        pem = pem.replace(b"-----BEGIN CERTIFICATE-----", b"-----BEGIN CERTIFICATE REQUEST-----").replace(
            b"-----END CERTIFICATE-----", b"-----END CERTIFICATE REQUEST-----"
        )
    elif pem_type not in _CSR_PEM_TYPES:
        raise _reject(
            f"PEM type {pem_type.decode()!r} is not 'CERTIFICATE REQUEST'",
            "csr_wrong_pem_type",
        )
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise _reject("the PEM block is not a parseable PKCS#10 request", "csr_unparseable") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _reject("the public key cannot be read or its type is not supported", "csr_key_type") from None
    if csr.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:  # type: ignore[attr-defined]
        raise _reject(
            "RSA key restricted to RSASSA-PSS (id-RSASSA-PSS) is not accepted: the certificate would "
            "drop the restriction; use an rsaEncryption RSA key",
            "csr_key_type",
        )
    checked = check_public_key(public_key)
    if not _self_signature_valid(csr, checked):
        raise _reject("the request's self-signature does not verify with its public key", "csr_signature")
    return csr, checked


_ECDSA_SIGNATURES: dict[x509.ObjectIdentifier, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: hashes.SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: hashes.SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: hashes.SHA512,
}


def _self_signature_valid(csr: x509.CertificateSigningRequest, public_key: PublicKey) -> bool:
    # Proof of possession (RFC 2986 §3). For ECDSA, the usual case, verify with the key already
    # read rather than letting is_signature_valid read it again (a measured ~8 µs per request);
    # the signature algorithm must still be ECDSA with a SHA-2 hash.
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            hash_cls = _ECDSA_SIGNATURES.get(csr.signature_algorithm_oid)
            if hash_cls is None:
                return False
            public_key.verify(csr.signature, csr.tbs_certrequest_bytes, ec.ECDSA(hash_cls()))
            return True
        return csr.is_signature_valid
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False


def check_public_key(public_key: object) -> PublicKey:
    """Raise InvalidRequest unless the key is ECDSA P-256/P-384, Ed25519 or RSA 2048–8192 bits."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ACCEPTED_CURVES):
            return public_key
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    elif isinstance(public_key, rsa.RSAPublicKey):
        if MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
            return public_key
        raise _reject(
            f"RSA key of {public_key.key_size} bits; accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS} bits",
            "csr_key_type",
        )
    raise _reject(
        f"key type {describe_public_key(public_key)} is not accepted "
        "(accepted: ECDSA P-256, ECDSA P-384, Ed25519, RSA ≥ 2048 bits)",
        "csr_key_type",
    )
