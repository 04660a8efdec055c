"""Writes the hostile-input corpus into ``tests/corpus/``: ``csr/*`` (certificate signing requests the
CA must refuse, or in two cases accept), ``token/*`` (identity tokens for the JWKS and
KUBERNETES validators) and ``iam/*`` (AWS IAM proofs, design §6.6). Run it again to refresh the
files (keys are random, shapes are not):

    .venv/bin/python tests/support/make_corpus.py

``tests/e2e/test_fuzz.py`` sends every csr and token file through the real gRPC server and states,
per file name prefix, the status it must get (design §3). ``tests/e2e/test_fuzz_iam.py`` sends the
iam files, and the same shapes made at run time from a fresh proof for its own STS double
(:func:`iam_cases`), in process and through the gRPC server.
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


IAM_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def proof_token(doc: object) -> str:
    """A proof's token: base64url of ``doc`` (JSON-encoded unless bytes), no padding."""
    return b64url(doc if isinstance(doc, bytes) else json.dumps(doc).encode())


def iam_cases(good: dict[str, str], elsewhere: dict[str, str], noise_seed: int = 17) -> dict[str, str]:
    """Hostile AWS IAM proofs made from ``good`` (the headers of a real signed GetCallerIdentity
    proof) and ``elsewhere`` (a real proof with the same credentials, signed for another host).

    The name's prefix says what a CA whose STS ``good`` was signed for must answer:
    ``ok-`` the proof is good (the control, and encodings of it); ``sts-`` well formed, so it
    reaches STS, which refuses the signature or the key (PERMISSION_DENIED); ``local-`` refused
    before any STS call (PERMISSION_DENIED); ``toolarge-`` over the gRPC layer's 64 KiB
    (RESOURCE_EXHAUSTED; in process PERMISSION_DENIED, before any call)."""
    import random

    def doc(headers: dict[str, object] | object = None, **fields: object) -> dict:
        d = {"method": "POST", "headers": dict(good) if headers is None else headers, "body": IAM_BODY}
        return d | fields

    def changed(**changes: str | None) -> dict[str, str]:
        out = dict(good)
        for name, value in changes.items():
            name = name.replace("_", "-")
            out = {k: v for k, v in out.items() if k.lower() != name.lower()}
            if value is not None:
                out[name] = value
        return out

    def header(name: str) -> str:
        return header_of(good, name)

    auth = header("Authorization")
    signed = auth.split("SignedHeaders=")[1].split(",")[0]
    scope = auth.split("Credential=")[1].split(",")[0]  # AKID/DATE/REGION/SERVICE/aws4_request
    akid, date, region, service, _ = scope.split("/")
    sig = auth[-64:]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    good_token = proof_token(doc())
    raw = json.dumps(doc(), separators=(",", ":")).encode()
    rng = random.Random(noise_seed)

    def duplicated(name: str, other: str) -> bytes:
        # the same header twice, the second spelled in upper case with another value
        inner = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in good.items())
        extra = f",{json.dumps(name.upper())}:{json.dumps(other)}"
        return f'{{"method":"POST","headers":{{{inner}{extra}}},"body":{json.dumps(IAM_BODY)}}}'.encode()

    cases: dict[str, str] = {
        # the control, and other encodings of the same proof
        "ok-control": good_token,
        "ok-padded": base64.urlsafe_b64encode(raw).decode(),
        "ok-standard-alphabet": base64.b64encode(raw).decode(),
        # reaches STS, which finds the signature or the key wrong
        "sts-signature-flipped": proof_token(doc(changed(Authorization=auth[:-64] + flipped))),
        "sts-signed-content-type-changed": proof_token(doc(changed(Content_Type="text/plain"))),
        "sts-unknown-access-key": proof_token(
            doc(changed(Authorization=auth.replace(f"Credential={akid}/", "Credential=AKIDUNKNOWN0/")))
        ),
        # huge headers, too many headers, over the size cap
        "local-huge-header-value": proof_token(doc(changed(X_Amz_Security_Token="A" * 5000))),
        "local-huge-authorization": proof_token(doc(changed(Authorization=auth + ", " + "x" * 4000))),
        "local-huge-header-name": proof_token(doc(good | {"X-" + "a" * 5000: "v"})),
        "local-too-many-headers": proof_token(doc(good | {f"X-Amz-Meta-{i}": "v" for i in range(17)})),
        "local-over-size-cap": proof_token(raw[:-1] + b" " * (16 * 1024) + b"}"),
        "toolarge-70k-header": proof_token(doc(changed(X_Amz_Security_Token="A" * 70_000))),
        # duplicated headers and members (same name, another case)
        "local-duplicate-host-case": proof_token(duplicated("Host", "169.254.169.254")),
        "local-duplicate-authorization-case": proof_token(duplicated("Authorization", auth)),
        "local-duplicate-date-case": proof_token(duplicated("X-Amz-Date", header("X-Amz-Date"))),
        "local-duplicate-member": proof_token(raw[:-1] + b',"BODY":' + json.dumps(IAM_BODY).encode() + b"}"),
        # bytes that are not UTF-8, values that are not printable ASCII
        "local-not-utf8-json": proof_token(raw.replace(b'"POST"', b'"PO\xff\xfeST"')),
        "local-not-utf8-value": proof_token(
            raw.replace(header("X-Amz-Date").encode(), header("X-Amz-Date").encode() + b"\xc3\x28")
        ),
        "local-not-utf8-raw": proof_token(b"\xff\xfe\x00\x80" + raw),
        "local-latin1-value": proof_token(doc(changed(Host=header("Host") + "\u00e9"))),
        "local-crlf-injection": proof_token(doc(changed(Host=header("Host") + "\r\nX-Injected: 1"))),
        "local-nul-in-value": proof_token(doc(changed(X_Amz_Date=header("X-Amz-Date") + "\x00"))),
        # the wrong action, a body with extra parameters
        "local-wrong-action": proof_token(doc(body="Action=AssumeRole&Version=2011-06-15")),
        "local-wrong-action-case": proof_token(doc(body=IAM_BODY.lower())),
        "local-body-extra-parameter": proof_token(doc(body=IAM_BODY + "&RoleArn=arn:aws:iam::1:role/x")),
        "local-body-reordered": proof_token(doc(body="Version=2011-06-15&Action=GetCallerIdentity")),
        "local-body-not-string": proof_token(doc(body={"Action": "GetCallerIdentity"})),
        "local-body-missing": proof_token({"method": "POST", "headers": good}),
        "local-method-get": proof_token(doc(method="GET")),
        # URL, host and endpoint fields: the CA sends proofs to its own endpoint only
        "local-url-field": proof_token(doc(url="http://169.254.169.254/latest/meta-data/")),
        "local-endpoint-field": proof_token(doc(endpoint="https://" + header_of(elsewhere, "Host"))),
        "local-host-field": proof_token(doc(host=header_of(elsewhere, "Host"))),
        "local-path-field": proof_token(doc(path="/?Action=AssumeRole")),
        "local-forwarded-host-header": proof_token(
            doc(good | {"X-Forwarded-Host": header_of(elsewhere, "Host")})
        ),
        "local-transfer-encoding-header": proof_token(doc(good | {"Transfer-Encoding": "chunked"})),
        # a signed Host naming another host
        "local-signed-for-another-host": proof_token(doc(elsewhere)),
        "local-host-metadata-service": proof_token(doc(changed(Host="169.254.169.254"))),
        "local-host-with-user": proof_token(doc(changed(Host="user@" + header("Host")))),
        "local-host-absolute-url": proof_token(doc(changed(Host="http://" + header("Host") + "/"))),
        # Authorization missing or malformed
        "local-authorization-missing": proof_token(doc(changed(Authorization=None))),
        "local-authorization-empty": proof_token(doc(changed(Authorization=""))),
        "local-authorization-sigv2": proof_token(doc(changed(Authorization=f"AWS {akid}:c2lnbmF0dXJl"))),
        "local-authorization-other-algorithm": proof_token(
            doc(changed(Authorization=auth.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512")))
        ),
        "local-authorization-not-hex": proof_token(doc(changed(Authorization=auth[:-64] + "z" * 64))),
        "local-authorization-server-id-unsigned": proof_token(
            doc(changed(Authorization=auth.replace(";x-sentryca-server-id", "")))
        ),
        "local-authorization-signs-unsent-header": proof_token(
            doc(changed(Authorization=auth.replace(signed, signed + ";x-amz-security-token")))
        ),
        "local-authorization-other-region": proof_token(
            doc(changed(Authorization=auth.replace(f"/{region}/", "/eu-west-1/")))
        ),
        "local-authorization-other-service": proof_token(
            doc(changed(Authorization=auth.replace(f"/{service}/", "/s3/")))
        ),
        "local-date-malformed": proof_token(doc(changed(X_Amz_Date="yesterday"))),
        "local-date-not-the-scope": proof_token(doc(changed(Authorization=auth.replace(date, "20200101")))),
        "local-date-long-ago": proof_token(
            doc(changed(X_Amz_Date="20200101T000000Z", Authorization=auth.replace(f"/{date}/", "/20200101/")))
        ),
        # shapes that are not a proof: deep JSON, other types, base64 noise
        "local-deep-json-array": proof_token(b"[" * 6000 + b"]" * 6000),
        "local-deep-json-header": proof_token(
            raw.replace(b'"headers":', b'"headers":' + b'{"a":' * 1500, 1)[:-1] + b"}" * 1500 + b"}"
        ),
        "local-json-array": proof_token([doc()]),
        "local-json-string": proof_token(good_token),
        "local-json-null": proof_token(None),
        "local-headers-list": proof_token(doc(list(good.items()))),
        "local-headers-empty": proof_token(doc({})),
        "local-header-value-list": proof_token(doc(good | {"Host": [header("Host")]})),
        "local-header-value-number": proof_token(doc(changed(X_Amz_Date=None) | {"X-Amz-Date": 20261202})),
        "local-base64-noise": b64url(rng.randbytes(600)),
        "local-base64-noise-long": b64url(rng.randbytes(12_000)),
        "local-not-base64": "!!!***$$$" + good_token[:40],
        "local-empty": "",
        "local-jwt-shape": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        # damaged real proofs
        "local-truncated-half": good_token[: len(good_token) // 2],
        "local-truncated-last": good_token[:-1],
        "local-good-twice": good_token + good_token,
    }
    for n in range(6):  # one base64 character changed at spread positions
        i = (len(good_token) * (2 * n + 1)) // 12
        c = "A" if good_token[i] != "A" else "B"
        cases[f"local-damaged-char-{n}"] = good_token[:i] + c + good_token[i + 1 :]
    return cases


def header_of(headers: dict[str, str], name: str) -> str:
    return next(v for k, v in headers.items() if k.lower() == name.lower())


def signed_proof_headers(host: str, server_id: str, public_key, akid: str, secret: str) -> dict[str, str]:
    """The headers of a real proof (the client library's ``aws_iam_token``) for ``host``."""
    from botocore.credentials import Credentials

    from sentryca_client.aws_iam import aws_iam_token

    token = aws_iam_token(
        public_key, server_id, sts_endpoint=f"https://{host}", credentials=Credentials(akid, secret)
    )
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["headers"]


def iam_corpus() -> dict[str, str]:
    """:func:`iam_cases` around proofs for STS's public endpoints: every file is refused before any
    STS call by a CA configured otherwise (host, date), whatever its prefix."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    server_id = "spiffe://public/ns/default/dapr-sentry"
    good = signed_proof_headers("sts.us-east-1.amazonaws.com", server_id, key, "AKIDCORPUS", "corpus")
    elsewhere = signed_proof_headers("sts.amazonaws.com", server_id, key, "AKIDCORPUS", "corpus")
    return iam_cases(good, elsewhere)


def main() -> None:
    for sub in ("csr", "token", "iam"):
        d = CORPUS / sub
        d.mkdir(exist_ok=True)
        for old in d.iterdir():
            old.unlink()
    for name, data in csr_corpus().items():
        (CORPUS / "csr" / name).write_bytes(data)
    for name, text in token_corpus().items():
        (CORPUS / "token" / name).write_bytes(text.encode())
    for name, text in iam_corpus().items():
        (CORPUS / "iam" / f"{name}.txt").write_bytes(text.encode())


if __name__ == "__main__":
    main()
