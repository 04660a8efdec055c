"""Writes the hostile-input corpus into ``tests/corpus/``: ``csr/*`` (certificate signing requests the
CA must refuse, or in two cases accept) and ``token/*`` (identity tokens for the JWKS and
KUBERNETES validators). Run it again to refresh the files (keys are random, shapes are not):

    .venv/bin/python tests/support/make_corpus.py

``tests/e2e/test_fuzz.py`` sends every file through the real gRPC server and states, per file name
prefix, the status it must get (design §3).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from cryptography.x509.oid import NameOID

CORPUS = Path(__file__).resolve().parents[1] / "corpus"  # tests/corpus (a script: no `support` import)
PEM_CSR = ("-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----")


SHA256 = hashes.SHA256()


def csr(key, algorithm=SHA256, sans: int = 1) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corpus")])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(f"n{i}.example.com") for i in range(sans)]), critical=False
    )
    return builder.sign(key, algorithm)


def pem_of(der: bytes, label: str = "CERTIFICATE REQUEST") -> bytes:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def csr_corpus() -> dict[str, bytes]:
    p256 = ec.generate_private_key(ec.SECP256R1())
    good = csr(p256)
    good_der = good.public_bytes(serialization.Encoding.DER)
    good_pem = good.public_bytes(serialization.Encoding.PEM)
    bad_sig = bytearray(good_der)
    bad_sig[-3] ^= 0x01
    deep = b""
    for _ in range(5000):  # ASN.1 SEQUENCEs nested 5000 deep
        deep = b"\x30" + der_length(len(deep)) + deep
    cert_key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]))
        .public_key(cert_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2035, 1, 1, tzinfo=UTC))
        .sign(cert_key, hashes.SHA256())
    )
    return {
        # accepted: the control cases
        "ok-p256.pem": good_pem,
        "ok-many-sans.pem": csr(p256, sans=300).public_bytes(serialization.Encoding.PEM),
        # not PEM, or PEM of another kind
        "invalid-raw-der.der": good_der,
        "invalid-truncated-pem.pem": good_pem[: len(good_pem) // 2],
        "invalid-truncated-der.pem": pem_of(good_der[: len(good_der) // 2]),
        "invalid-trailing-garbage-in-der.pem": pem_of(good_der + b"\x00garbage"),
        "invalid-two-blocks.pem": good_pem + good_pem,
        "invalid-nested-pem.pem": pem_of(good_pem),
        "invalid-empty-block.pem": f"{PEM_CSR[0]}\n{PEM_CSR[1]}\n".encode(),
        "invalid-bad-base64.pem": f"{PEM_CSR[0]}\n!!!!****\n{PEM_CSR[1]}\n".encode(),
        "invalid-no-end-line.pem": good_pem.replace(PEM_CSR[1].encode(), b""),
        "invalid-certificate.pem": cert.public_bytes(serialization.Encoding.PEM),
        "invalid-private-key.pem": p256.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "invalid-public-key.pem": p256.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "invalid-deep-asn1.pem": pem_of(deep),
        "invalid-length-overflow.pem": pem_of(b"\x30\x84\xff\xff\xff\xff" + good_der[4:]),
        "invalid-nul-bytes.pem": good_pem.replace(b"\n", b"\x00\n", 3),
        "invalid-bom.pem": b"\xef\xbb\xbf" + good_pem.replace(b"-----BEGIN", b"-----BEGIN\xef\xbb\xbf", 1),
        "invalid-bad-signature.pem": pem_of(bytes(bad_sig)),
        # keys the CA does not accept (design §3 step 4)
        "invalid-key-p521.pem": csr(ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-key-secp256k1.pem": csr(ec.generate_private_key(ec.SECP256K1())).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-key-p192.pem": csr(ec.generate_private_key(ec.SECP192R1())).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-key-rsa1024.pem": csr(rsa.generate_private_key(65537, 1024)).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-key-dsa2048.pem": csr(dsa.generate_private_key(2048)).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-key-ed448.pem": csr(ed448.Ed448PrivateKey.generate(), None).public_bytes(
            serialization.Encoding.PEM
        ),
        "invalid-ecdsa-sha224.pem": csr(p256, hashes.SHA224()).public_bytes(serialization.Encoding.PEM),
        # larger than design §3 step 0 allows: refused by the gRPC layer
        "toolarge-70k.pem": pem_of(b"\x30\x82" + b"A" * 52_000),
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_of(header: object, payload: object, signature: bytes = b"sig") -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64url(h)}.{b64url(p)}.{b64url(signature)}"


def pod_claim(name: object) -> dict:
    return {"kubernetes.io": {"namespace": "prod", "pod": {"name": name}}}


def token_corpus() -> dict[str, str]:
    claims = {
        "sub": "spiffe://public/ns/prod/orders",
        "aud": "spiffe://localhost/ns/default/dapr-sentry",
        "exp": 4_000_000_000,
        "kubernetes.io": {"namespace": "prod", "pod": {"name": "orders"}},
    }
    p256 = ec.generate_private_key(ec.SECP256R1())

    return {
        "not-a-jwt.txt": "hello",
        "two-parts.txt": "a.b",
        "four-parts.txt": "a.b.c.d",
        "dots-only.txt": "..",
        "not-base64.txt": "!!!.***.$$$",
        "header-not-json.txt": f"{b64url(b'{not json')}.{b64url(b'{}')}.c2ln",
        "header-array.txt": jwt_of([1, 2], claims),
        "header-deep-nesting.txt": jwt_of(b"[" * 20000 + b"]" * 20000, claims),
        "payload-deep-nesting.txt": jwt_of({"alg": "ES256"}, b'{"a":' * 5000 + b"1" + b"}" * 5000),
        "alg-none.txt": jwt_of({"alg": "none"}, claims, b""),
        "alg-hs256.txt": jwt.encode(claims, "secret-key-0123456789abcdef0123456789", algorithm="HS256"),
        "alg-list.txt": jwt_of({"alg": ["ES256"]}, claims),
        "alg-object.txt": jwt_of({"alg": {"x": 1}}, claims),
        "alg-es512-p521.txt": jwt.encode(claims, ec.generate_private_key(ec.SECP521R1()), algorithm="ES512"),
        "alg-es256k.txt": jwt_of({"alg": "ES256K", "kid": "k"}, claims),
        "kid-number.txt": jwt_of({"alg": "ES256", "kid": 7}, claims),
        "kid-huge.txt": jwt_of({"alg": "ES256", "kid": "k" * 30000}, claims),
        "unknown-key.txt": jwt.encode(claims, p256, algorithm="ES256", headers={"kid": "key-1"}),
        "pod-claim-not-object.txt": jwt_of({"alg": "RS256"}, {"kubernetes.io": "pod"}),
        "pod-name-number.txt": jwt_of({"alg": "RS256"}, {"kubernetes.io": {"pod": {"name": 5}}}),
        "pod-name-traversal.txt": jwt_of(
            {"alg": "RS256"}, {"kubernetes.io": {"pod": {"name": "../../secrets/x"}}}
        ),
        "pod-name-unicode.txt": jwt_of(
            {"alg": "RS256"}, {"kubernetes.io": {"pod": {"name": "pöd\u202e\x00"}}}
        ),
        "payload-not-utf8.txt": b64url(b"{}") + "." + b64url(b"\xff\xfe{") + ".c2ln",
        "control-chars.txt": "a\x00b.\x1b[31m.\r\n",
        "unicode.txt": "\u00e9\u4e2d\U0001f600.\u200b.\ufeff",
        "huge-70k.txt": jwt_of({"alg": "ES256"}, {"x": "y" * 52_000}),
    }


def main() -> None:
    for sub in ("csr", "token"):
        d = CORPUS / sub
        d.mkdir(exist_ok=True)
        for old in d.iterdir():
            old.unlink()
    for name, data in csr_corpus().items():
        (CORPUS / "csr" / name).write_bytes(data)
    for name, text in token_corpus().items():
        (CORPUS / "token" / name).write_bytes(text.encode())


if __name__ == "__main__":
    main()
