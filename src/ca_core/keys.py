"""CA key algorithms, key generation, and private-key (de)serialisation.

Keys are written as PKCS#8 PEM and read as PKCS#8, SEC1 (``EC PRIVATE KEY``) or PKCS#1
(``RSA PRIVATE KEY``), as older Sentry versions wrote them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


@runtime_checkable
class RemoteKey(Protocol):
    """A private key held outside the process (a KMS key, design §5.18): a ``cryptography``
    private-key object whose ``sign`` asks the key's service, so ``CertificateBuilder.sign``
    takes it like a local key. Its private half never exists here: it is stored by reference
    (``key_uri``, e.g. ``kms://arn:aws:kms:...``), never as PEM."""

    @property
    def key_uri(self) -> str:
        """The key's reference as stored in the bundle (``kms://<key ARN>``)."""
        ...


# What opens a stored key reference (``kms://...``) as a signing key object: the adapter's
# (``adapters.kms.open_key``); the core receives it and never does the I/O itself.
KeyOpener = Callable[[str], "PrivateKey"]


def key_uri_of(key: object) -> str | None:
    """The reference of a :class:`RemoteKey`, or None for a key held in memory."""
    return key.key_uri if isinstance(key, RemoteKey) else None


class KeyAlgorithm(enum.Enum):
    """Algorithms for the CA's own generated keys (``--ca-key-algorithm``)."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, name: str) -> KeyAlgorithm:
        """``name``: one of ecdsa-p256, ecdsa-p384, ed25519 (case-insensitive); raises ValueError."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            allowed = ", ".join(a.value for a in cls)
            raise ValueError(f"unknown CA key algorithm {name!r}; use one of {allowed}") from None

    def generate(self) -> PrivateKey:
        """A fresh private key of this algorithm."""
        if self is KeyAlgorithm.ECDSA_P256:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyAlgorithm.ECDSA_P384:
            return ec.generate_private_key(ec.SECP384R1())
        return ed25519.Ed25519PrivateKey.generate()


def key_algorithm_of(key: object) -> KeyAlgorithm | None:
    """The :class:`KeyAlgorithm` of a public or private key (ECDSA P-256/P-384, Ed25519), or None
    for a key sentryca does not generate (RSA, other curves, Ed448)."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": KeyAlgorithm.ECDSA_P256, "secp384r1": KeyAlgorithm.ECDSA_P384}
        return curves.get(key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeyAlgorithm.ED25519
    return None


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest to sign with ``key``: SHA-384 for P-384 and larger curves, None for Ed25519
    (pure EdDSA), SHA-256 otherwise (RFC 5758 §3.2, RFC 8410 §6)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


# _LAZY: cryptography's serialization package also loads its SSH and cipher modules (~5 ms);
# the expiry function only reads certificates, so key (de)serialisation imports it on first use.


def load_private_key(pem: bytes) -> PrivateKey:
    """Parse a PEM private key: PKCS#8, SEC1 EC or PKCS#1 RSA, unencrypted.

    Raises ValueError with a readable reason when the bytes are not such a key or the key
    type is not one a CA can use (ECDSA, Ed25519, RSA).
    """
    from cryptography.hazmat.primitives import serialization  # not at the top: see _LAZY

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("private key is encrypted; supply it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM private key ({type(e).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (``PRIVATE KEY``). Raises ValueError for a
    :class:`RemoteKey` (its private half cannot leave its service)."""
    from cryptography.hazmat.primitives import serialization

    if (uri := key_uri_of(key)) is not None:
        raise ValueError(f"the key {uri} is held by its service and cannot be written as PEM")

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_der(key: CertificatePublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER of ``key`` (a CA key's public half or any certificate's key), to
    compare keys for equality."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def describe_public_key(key: object) -> str:
    """A short human description, e.g. ``ECDSA P-256``, ``RSA 2048``, ``Ed25519``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__
