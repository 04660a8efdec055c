"""Independent verification of everything the CA issues (design §4): a CSR made with the OpenSSL
CLI is signed by the running server over TLS, then checked by OpenSSL, pyca/cryptography's
X.509 verifier, pkilint's RFC 5280 linter and the ``spiffe`` package's X509-SVID parser."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import X509Svid

import sentryca_client as client
from ca_core.keys import KeyAlgorithm
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.openssl import run_openssl

# pkilint's URI check knows only common schemes and flags every spiffe:// URI; nothing else is excused.
KNOWN_FALSE_POSITIVES = {"pkix.invalid_uri_syntax"}

OPENSSL_KEYS = {
    "ec-p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec-p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-newkey", "ed25519"],
    "rsa-2048": ["-newkey", "rsa:2048"],
}


def openssl_csr(tmp: Path, kind: str) -> tuple[bytes, bytes]:
    key, csr = tmp / f"{kind}.key", tmp / f"{kind}.csr"
    r = run_openssl(
        "req", "-new", *OPENSSL_KEYS[kind], "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/"
    )
    assert r.returncode == 0, r.stderr.decode()
    return csr.read_bytes(), key.read_bytes()


def pkilint_errors(pem_file: Path) -> list[str]:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pkilint.bin.lint_pkix_cert",
            "lint",
            "-f",
            "JSON",
            "-s",
            "WARNING",
            str(pem_file),
        ],
        capture_output=True,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr.decode()
    out = json.loads(r.stdout or b'{"results": []}')
    return [
        f"{d['severity']} {d['code']}: {d.get('message')}"
        for res in out["results"]
        for d in res["finding_descriptions"]
        if d["code"] not in KNOWN_FALSE_POSITIVES
    ]


@pytest.fixture(scope="module", params=list(KeyAlgorithm), ids=lambda a: a.value)
def ca_by_algorithm(request, tmp_path_factory):
    store = tmp_path_factory.mktemp(f"creds-{request.param.value}")
    ca = CertificateAuthority()
    ca.start(ca_config(store, ca_key_algorithm=request.param.value))
    yield ca, store, request.param
    ca.stop(grace=0)


@pytest.mark.parametrize("kind", list(OPENSSL_KEYS))
def test_openssl_csr_signed_over_tls_passes_independent_verifiers(ca_by_algorithm, kind, tmp_path):
    ca, store, algorithm = ca_by_algorithm
    csr_pem, key_pem = openssl_csr(tmp_path, kind)
    anchors = (store / "ca.crt").read_bytes()
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        resp = client.sign(chan, csr_pem, "orders", "prod", trust_domain="example.org")
    chain = x509.load_pem_x509_certificates(resp.workload_certificate)
    leaf_pem, issuer_pem = (
        chain[0].public_bytes(serialization.Encoding.PEM),
        resp.workload_certificate[len(chain[0].public_bytes(serialization.Encoding.PEM)) :],
    )
    (tmp_path / "leaf.pem").write_bytes(leaf_pem)
    (tmp_path / "issuer.pem").write_bytes(issuer_pem)
    (tmp_path / "ca.pem").write_bytes(anchors)

    # OpenSSL: anchors as the CA file, the issuer chain as untrusted intermediates.
    r = run_openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-untrusted",
        str(tmp_path / "issuer.pem"),
        "-purpose",
        "sslclient",
        str(tmp_path / "leaf.pem"),
    )
    assert r.returncode == 0 and b"OK" in r.stdout, r.stdout + r.stderr
    r = run_openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-untrusted",
        str(tmp_path / "issuer.pem"),
        "-purpose",
        "sslserver",
        str(tmp_path / "leaf.pem"),
    )
    assert r.returncode == 0, r.stdout + r.stderr

    # pyca/cryptography's client verifier (its Web PKI profile forbids Ed25519 CA keys).
    if algorithm is not KeyAlgorithm.ED25519:
        verifier = (
            PolicyBuilder()
            .store(Store(x509.load_pem_x509_certificates(anchors)))
            .time(datetime.now(UTC))
            .build_client_verifier()
        )
        verified = verifier.verify(chain[0], chain[1:])
        assert [s.value for s in verified.subjects] == ["spiffe://example.org/ns/prod/orders"]

    # pkilint RFC 5280 linter: leaf, issuer and root.
    for name in ("leaf.pem", "issuer.pem", "ca.pem"):
        assert pkilint_errors(tmp_path / name) == [], name

    # The spiffe package's X509-SVID rules (leaf not CA, digitalSignature, one SPIFFE ID, chain CAs).
    key = serialization.load_pem_private_key(key_pem, None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    svid = X509Svid.parse(resp.workload_certificate, pkcs8)
    assert str(svid.spiffe_id) == "spiffe://example.org/ns/prod/orders"
    assert len(svid.cert_chain) == 2


def test_openssl_rejects_the_leaf_against_other_anchors(ca_by_algorithm, tmp_path):
    """The check above can fail: a chain verified against an unrelated root is refused."""
    ca, store, _ = ca_by_algorithm
    csr_pem, _ = openssl_csr(tmp_path, "ec-p256")
    anchors = (store / "ca.crt").read_bytes()
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        resp = client.sign(chan, csr_pem, "orders", "prod")
    other_store = tmp_path / "other"
    other = CertificateAuthority()
    other.start(ca_config(other_store))
    other.stop(grace=0)
    (tmp_path / "chain.pem").write_bytes(resp.workload_certificate)
    r = run_openssl(
        "verify",
        "-CAfile",
        str(other_store / "ca.crt"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        str(tmp_path / "chain.pem"),
    )
    assert r.returncode != 0
    with pytest.raises(client.VerifyError):
        client.verify_response(resp, (other_store / "ca.crt").read_bytes())
