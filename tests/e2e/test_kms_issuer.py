"""The issuer key in AWS KMS (design §5.18), against moto in server mode on loopback: `sentryca
serve`, `bundle init`, `rotate issuer`, `inspect` and `bundle export` with ``--issuer-key
kms://...``. Every leaf is signed through KMS ``Sign`` and the store holds only the key's
reference (``issuer.kms``); chains and leaves are checked with OpenSSL (``-x509_strict``), pyca's
verifier and pkilint; the store's bytes are searched for the issuer and root keys (moto holds
them in this process). KMS faults go through a loopback TCP proxy in front of moto: a stalled
KMS leaves the health service answering and the call UNAVAILABLE after the signing timeout; an
unreachable KMS or a disabled key is UNAVAILABLE with the reason, never INTERNAL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlparse

import grpc
import pytest
from cryptography import x509
from e2e.test_kms import assert_no_key_in, kms_key, moto_private_key, strict_verify
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sentryca_client as client
from adapters import kms
from adapters.stores import FileBundleStore
from ca_core.bundle import ISSUER_KEY, ISSUER_KEY_REF, ROOT_KEY, ROOT_KEY_REF, parse_bundle
from ca_core.certs import sign_workload
from ca_core.keys import public_key_der

from support.aws import aws_client
from support.cli import run_sentryca as run
from support.cli import serve
from support.pki import make_key
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


def same_key(cert: x509.Certificate, key_id: str) -> bool:
    return public_key_der(cert.public_key()) == public_key_der(moto_private_key(key_id).public_key())


def health(ca) -> int:
    with grpc.secure_channel(
        f"localhost:{ca.port}", grpc.ssl_channel_credentials(root_certificates=ca.anchors)
    ) as chan:
        answer = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    return answer.status


def test_serve_with_a_kms_issuer_key_signs_every_leaf_through_kms_and_kms_faults_are_unavailable(
    moto_endpoint, aws_env, tmp_path
):
    root_id, root_arn = kms_key(moto_endpoint, "ECC_NIST_P384")
    issuer_id, issuer_arn = kms_key(moto_endpoint, "ECC_NIST_P256", alias="sentryca-issuer")
    url = urlparse(moto_endpoint)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 80))
    env = aws_env | {"AWS_ENDPOINT_URL": proxy.endpoint}
    ca = serve(
        tmp_path,
        "--mode",
        "standalone",
        "--root-key",
        f"kms://{root_arn}",
        "--issuer-key",
        "kms://alias/sentryca-issuer",
        env=env,
    )
    ca.drain()
    try:
        signed = client.verify_response(ca.sign("orders", "prod"), ca.anchors)
        items = FileBundleStore(ca.creds).load().items
        assert ISSUER_KEY not in items and ROOT_KEY not in items
        assert items[ISSUER_KEY_REF] == f"kms://{issuer_arn}\n".encode()  # the ARN: an alias could move
        assert items[ROOT_KEY_REF] == f"kms://{root_arn}\n".encode()
        chain = x509.load_pem_x509_certificates(signed.chain_pem)
        assert same_key(chain[1], issuer_id) and same_key(x509.load_pem_x509_certificate(ca.anchors), root_id)
        strict_verify(tmp_path, signed.leaf, chain[1:], ca.anchors)
        for key_id in (root_id, issuer_id):
            assert_no_key_in(ca.creds, moto_private_key(key_id))

        # KMS stalls: the call waits in the I/O pool, the health service keeps answering on the loop.
        proxy.hold()
        outcome: dict = {}

        def call() -> None:
            started = time.monotonic()
            try:
                ca.sign("stalled", "prod")
            except grpc.RpcError as e:
                outcome["error"] = (e.code(), e.details())
            outcome["seconds"] = time.monotonic() - started

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)  # the call is waiting for KMS
        assert caller.is_alive()
        for _ in range(3):
            assert health(ca) == health_pb2.HealthCheckResponse.SERVING
            assert ca.healthz()[0] == 200
        caller.join(timeout=30)
        assert outcome["error"][0] == grpc.StatusCode.UNAVAILABLE, outcome
        assert f"the issuer key kms://{issuer_arn} did not sign within 5 s" in outcome["error"][1]

        # KMS unreachable: UNAVAILABLE naming the key and KMS, not INTERNAL.
        proxy.refuse()
        code, details = ca.refused("unreachable", "prod")
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert f"KMS key {issuer_arn}: cannot sign" in details or "did not sign within" in details, details

        # Back: leaves are signed again; then KMS answers Sign as for a disabled key (moto's
        # Sign signs with a disabled key, so the proxy gives KMS's answer on the wire).
        proxy.flow()
        client.verify_response(ca.sign("again", "prod"), ca.anchors)
        proxy.answer(
            400, b'{"__type":"DisabledException","message":"' + issuer_arn.encode() + b' is disabled."}'
        )
        code, details = ca.refused("disabled", "prod")
        assert code == grpc.StatusCode.UNAVAILABLE and "the key is disabled" in details, details
        assert health(ca) == health_pb2.HealthCheckResponse.SERVING
        metrics = ca.metrics()
        for reason in ("kms_timeout", "kms_key_disabled"):
            assert f'category="unavailable",reason="{reason}"' in metrics, reason
        assert 'category="internal"' not in metrics
    finally:
        log = ca.stop()
        proxy.close()
    assert "Traceback" not in log
    assert "sign request refused: UNAVAILABLE: the issuer key" in log and "(DisabledException)" in log, log


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P384"])
def test_serve_with_a_kms_issuer_key_of_each_other_spec_signs_leaves_that_verify_strictly(
    spec, moto_endpoint, aws_env, tmp_path
):
    issuer_id, issuer_arn = kms_key(moto_endpoint, spec)
    ca = serve(tmp_path, "--mode", "standalone", "--issuer-key", f"kms://{issuer_arn}", env=aws_env)
    try:
        signed = client.verify_response(ca.sign("orders", "prod"), ca.anchors)
    finally:
        ca.stop()
    chain = x509.load_pem_x509_certificates(signed.chain_pem)
    assert same_key(chain[1], issuer_id)  # the issuer certifies the KMS key, which signed the leaf
    oid = x509.SignatureAlgorithmOID
    expected = oid.RSA_WITH_SHA256 if spec.startswith("RSA") else oid.ECDSA_WITH_SHA384
    assert signed.leaf.signature_algorithm_oid == expected
    strict_verify(tmp_path, signed.leaf, chain[1:], ca.anchors)
    assert_no_key_in(ca.creds, moto_private_key(issuer_id))


def test_bundle_init_and_rotate_issuer_with_a_kms_issuer_key(moto_endpoint, aws_env, tmp_path):
    store = tmp_path / "store"
    issuer_id, issuer_arn = kms_key(moto_endpoint, "ECC_NIST_P256")
    r = run(
        "bundle",
        "init",
        "--issuer-credentials",
        str(store),
        "--issuer-key",
        f"kms://{issuer_id}",
        env=aws_env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    items = FileBundleStore(store).load().items
    assert ISSUER_KEY not in items and ROOT_KEY in items  # the default root key stays local
    r = run("inspect", "--issuer-credentials", str(store), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"issuer key in KMS: kms://{issuer_arn}" in r.stdout and "root key in the store" in r.stdout

    def bundle():
        return parse_bundle(FileBundleStore(store).load().items, open_key=kms.open_key)

    # rotate issuer with no --issuer-key: the same KMS key, certified again
    first = bundle().issuer
    r = run("rotate", "issuer", "--issuer-credentials", str(store), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    renewed = bundle()
    assert renewed.issuer != first and same_key(renewed.issuer, issuer_id)
    assert renewed.issuer_key_uri == f"kms://{issuer_arn}"

    # rotate issuer --issuer-key kms://NEW: a new KMS key certified by the root
    new_id, new_arn = kms_key(moto_endpoint, "ECC_NIST_P384", alias="sentryca-issuer-2")
    r = run(
        "rotate",
        "issuer",
        "--issuer-credentials",
        str(store),
        "--issuer-key",
        "kms://alias/sentryca-issuer-2",
        env=aws_env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"the new issuer's key is kms://{new_arn} (ECC_NIST_P384)" in r.stdout
    moved = bundle()
    assert same_key(moved.issuer, new_id) and moved.issuer_key_uri == f"kms://{new_arn}"
    leaf = sign_workload(
        moved.issuer, moved.issuer_key, make_key().public_key(), "spiffe://public/ns/p/a", datetime.now(UTC)
    )
    strict_verify(tmp_path, leaf, moved.issuer_chain, moved.anchors_pem)
    for key_id in (issuer_id, new_id):
        assert_no_key_in(store, moto_private_key(key_id))

    # bundle export never pretends to export the KMS issuer key
    out = tmp_path / "backup"
    r = run("bundle", "export", "--issuer-credentials", str(store), "--out", str(out), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"not exported: the key(s) held by KMS (kms://{new_arn})" in r.stdout
    assert (out / ISSUER_KEY_REF).read_bytes() == f"kms://{new_arn}\n".encode()
    assert not (out / ISSUER_KEY).exists()

    # a disabled key is refused before anything is written
    aws_client("kms", moto_endpoint).disable_key(KeyId=issuer_id)
    before = FileBundleStore(store).load().items
    r = run(
        "rotate",
        "issuer",
        "--issuer-credentials",
        str(store),
        "--issuer-key",
        f"kms://{issuer_id}",
        env=aws_env,
    )
    assert r.returncode != 0 and "is Disabled: nothing can be signed with it" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and FileBundleStore(store).load().items == before

    # back to a local issuer key
    r = run("rotate", "issuer", "--issuer-credentials", str(store), "--issuer-key", "local", env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    items = FileBundleStore(store).load().items
    assert ISSUER_KEY in items and ISSUER_KEY_REF not in items
    local = parse_bundle(items)
    local.issuer.verify_directly_issued_by(local.trust_anchors[0])
    r = run("inspect", "--issuer-credentials", str(store), env=aws_env)
    assert "issuer key in the store" in r.stdout, r.stdout


def test_with_private_ca_the_kms_issuer_key_is_certified_and_renewed_through_it(
    moto_endpoint, aws_env, tmp_path, monkeypatch
):
    """--upstream-authority with --issuer-key kms://: the CSR is signed by KMS, Private CA (the
    loopback double) certifies the KMS key, and the automatic renewals certify the same key."""
    from datetime import timedelta

    from adapters.acm_pca import AcmPcaAuthority, Backoff
    from ca_core.validators import SignRequest, TokenValidatorKind
    from handlers.server import CertificateAuthority

    from support.acmpca_double import AcmPcaDouble
    from support.ca import ca_config
    from support.pki import make_csr, verifies

    issuer_id, issuer_arn = kms_key(moto_endpoint, "ECC_NIST_P256")
    with AcmPcaDouble() as double:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ACM_PCA", double.endpoint)
        start_at = datetime.now(UTC)
        clock = [start_at]
        ca = CertificateAuthority(
            clock=lambda: clock[0],
            upstream_authority=lambda up: AcmPcaAuthority(up, backoff=Backoff(polls=2), sleep=lambda s: None),
        )
        cfg = ca_config(
            tmp_path / "credentials",
            upstream_authority=double.upstream,
            issuer_key=f"kms://{issuer_id}",
            issuer_ttl="24h",
            auto_rotate="true",
            expiry_check_interval="1h",
            workload_cert_ttl="4h",
        )
        ca.start(cfg)
        issuers = set()
        try:
            while clock[0] < start_at + timedelta(days=2):
                bundle = ca.signer.bundle
                assert bundle.issuer_key_uri == f"kms://{issuer_arn}" and same_key(bundle.issuer, issuer_id)
                assert bundle.trust_anchors == (double.root,)
                issuers.add(bundle.issuer.serial_number)
                request = SignRequest(
                    "app", "prod", make_csr(), token_validator=TokenValidatorKind.INSECURE.value
                )
                signed = ca.signer.sign(request, clock[0])
                certs = x509.load_pem_x509_certificates(signed.chain_pem)
                assert verifies(certs[0], certs[1:], signed.anchors_pem, clock[0])
                clock[0] += timedelta(hours=2)
                ca.maintain()
        finally:
            ca.stop(grace=0)
        items = FileBundleStore(tmp_path / "credentials").load().items
        assert ISSUER_KEY not in items and ROOT_KEY not in items
        assert_no_key_in(tmp_path / "credentials", moto_private_key(issuer_id))
    assert len(issuers) >= 2  # renewed through Private CA, each for the same KMS key
