"""A private key held "elsewhere" for the pure core's tests of KMS keys (design §5.18): a
:class:`~ca_core.keys.RemoteKey` whose ``sign`` uses a real P-256 key the bundle never sees."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class ElsewhereKey(ec.EllipticCurvePrivateKey):
    """A P-256 key whose private half stays in this object (as in KMS): it signs and counts."""

    def __init__(self, uri: str) -> None:
        self._key, self.key_uri, self.signed = ec.generate_private_key(ec.SECP256R1()), uri, 0

    def sign(self, data, signature_algorithm):
        self.signed += 1
        return self._key.sign(data, signature_algorithm)

    def public_key(self):
        return self._key.public_key()

    @property
    def curve(self):
        return self._key.curve

    @property
    def key_size(self):
        return self._key.key_size

    def exchange(self, algorithm, peer_public_key):
        raise ValueError("no")

    def private_numbers(self):
        raise ValueError("held elsewhere")

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise ValueError("held elsewhere")

    def secret(self) -> bytes:  # the test's own view of what must never be stored
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def opener(*keys: ElsewhereKey):
    by_uri = {k.key_uri: k for k in keys}
    return lambda uri: by_uri[uri]
