"""One call for an X.509 SVID (:func:`request_x509_svid`): a fresh key and its CSR, the CA's
SignCertificate over TLS, the answer verified against the caller's trust anchors; what
``sentryca request`` does, for Python code such as a Lambda function's init phase::

    from sentryca_client import request_x509_svid
    svid = request_x509_svid("ca.internal:50001", anchors_pem, "orders", "prod",
                             trust_domain="example.org", aws_iam=True)
    # svid.private_key_pem, svid.chain_pem (leaf first), svid.trust_anchors_pem

Needs grpcio, protobuf and cryptography; ``aws_iam=True`` needs botocore too (the ``aws`` extra
of the client distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .client import channel, sign, verify_response

# --key-algorithm's names, as the CA's own key algorithms are named (design §7.1)
KEY_ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "ed25519")


@dataclass(frozen=True)
class X509Svid:
    """An issued and verified X.509 SVID: ``private_key_pem`` (PKCS#8, unencrypted),
    ``chain_pem`` (leaf first, then the issuer chain), ``trust_anchors_pem`` (the CA's roots, as
    returned and checked), ``spiffe_id`` and ``valid_until`` (the leaf's notAfter, UTC). Its
    repr leaves the key out."""

    private_key_pem: bytes
    chain_pem: bytes
    trust_anchors_pem: bytes
    spiffe_id: str
    valid_until: datetime

    def __repr__(self) -> str:
        return f"X509Svid(spiffe_id={self.spiffe_id!r}, valid_until={self.valid_until.isoformat()!r})"


class TokenFileError(Exception):
    """``--token-file``'s file holds no usable token; the message says why."""


def read_token_file(path: str) -> str:
    """The identity token in the file ``path`` (a projected service-account token, a CI job's
    OIDC token), read now so that a token its issuer renews in place is current: ASCII, one word,
    surrounding whitespace stripped. Raises TokenFileError: unreadable, not ASCII, empty or more
    than one word."""
    from pathlib import Path

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise TokenFileError(f"cannot read it ({e.strerror or e})") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError("not a token (not ASCII text)") from None
    if not token or any(c.isspace() for c in token):
        raise TokenFileError("holds no token (empty, or more than one word)")
    return token


def generate_key(algorithm: str = "ecdsa-p256") -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """A fresh private key of ``algorithm`` (one of :data:`KEY_ALGORITHMS`); raises ValueError."""
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key algorithm {algorithm!r}; use {', '.join(KEY_ALGORITHMS)}")


def make_csr(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """A PEM CSR for ``key`` with an empty subject (the CA sets the SPIFFE ID, design §4)."""
    digest: hashes.SHA256 | hashes.SHA384 | None = None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, digest)
    return csr.public_bytes(serialization.Encoding.PEM)


def request_x509_svid(
    server: str,
    trust_anchors_pem: bytes,
    app_id: str,
    namespace: str,
    *,
    trust_domain: str = "",
    token: str = "",
    token_validator: int = 0,
    aws_iam: bool = False,
    aws_region: str | None = None,
    aws_sts_endpoint: str | None = None,
    aws_server_id: str | None = None,
    server_name: str | None = None,
    key_algorithm: str = "ecdsa-p256",
    timeout: float = 30.0,
) -> X509Svid:
    """Have the CA at ``server`` (HOST:PORT, TLS verified against ``trust_anchors_pem`` and
    ``server_name``, default HOST) sign a CSR of a fresh ``key_algorithm`` key for ``app_id`` in
    ``namespace`` (and ``trust_domain``, for INSECURE and JWKS), and verify the answer
    (:func:`~sentryca_client.verify_response`: the chain to the anchors, the SPIFFE ID asked for,
    the CSR's key). The identity: ``token`` with ``token_validator`` (the wire number: 0 the CA's
    default, 1 INSECURE, 2 KUBERNETES, 3 JWKS), or with ``aws_iam`` a GetCallerIdentity proof
    signed from botocore's default credential chain for ``aws_region`` (default ``AWS_REGION``,
    else ``AWS_DEFAULT_REGION``, else us-east-1) and ``aws_sts_endpoint`` (the CA's), naming
    ``aws_server_id`` (default: the SPIFFE ID of the CA's TLS certificate).
    ``timeout``: seconds for the call.

    Raises ValueError (an unknown ``key_algorithm``; a token given with ``aws_iam``; no single
    SPIFFE ID in the CA's certificate), grpc.RpcError (the CA's status and message, e.g.
    PERMISSION_DENIED; :func:`~sentryca_client.diagnose` tells its cause), VerifyError (the answer
    does not verify), OSError (no verified TLS handshake to read the CA's SPIFFE ID from) and
    aws_iam.NoCredentials."""
    key = generate_key(key_algorithm)
    csr_pem = make_csr(key)
    if aws_iam:
        if token:
            raise ValueError("aws_iam signs its own token: leave out token")
        from . import aws_iam as iam

        server_id = aws_server_id or iam.ca_spiffe_id(
            server, trust_anchors_pem, server_name, min(timeout, 10.0)
        )
        token = iam.aws_iam_token(
            key.public_key(), server_id, region=aws_region, sts_endpoint=aws_sts_endpoint
        )
        token_validator = iam.AWS_IAM_VALIDATOR
    with channel(server, trust_anchors_pem, server_name) as chan:
        response = sign(
            chan,
            csr_pem,
            app_id,
            namespace,
            trust_domain=trust_domain,
            token=token,
            token_validator=token_validator,
            timeout=timeout,
        )
    signed = verify_response(
        response,
        trust_anchors_pem,
        namespace=namespace,
        app_id=app_id,
        trust_domain=trust_domain or None,
        public_key=key.public_key(),
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return X509Svid(key_pem, signed.chain_pem, signed.anchors_pem, signed.spiffe_id, signed.valid_until)
