"""A running CA with ``--upstream-authority acm-pca://<CA ARN>`` (issue 16, item 3) against the
loopback Private CA double (support.acmpca_double, real keys over AWS JSON 1.1): the first bundle's
issuer is a path-length-0 subordinate the double signed for a key generated here, the trust anchor
is the double's root, and no root key is stored; leaves verify to that root (pyca's client verifier
and ``openssl verify -x509_strict``); on an injected clock, ``--auto-rotate`` renews the issuer
through the upstream with no root key present, and pending or throttled answers leave the CA
ready and serving its current issuer, with one clear message, until the upstream answers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.acm_pca import AcmPcaAuthority, Backoff
from adapters.stores import FileBundleStore
from ca_core.bundle import ROOT_KEY
from ca_core.errors import CAError
from ca_core.validators import SignRequest, TokenValidatorKind
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.cli import run_sentryca
from support.openssl import run_openssl
from support.pki import make_csr, verifies

STEP = timedelta(hours=1)


def sign(ca: CertificateAuthority, now: datetime) -> tuple[x509.Certificate, list[x509.Certificate], bytes]:
    request = SignRequest("app", "prod", make_csr(), token_validator=TokenValidatorKind.INSECURE.value)
    signed = ca.signer.sign(request, now)
    certs = x509.load_pem_x509_certificates(signed.chain_pem)
    return certs[0], certs[1:], signed.anchors_pem


def start(tmp_path, double, clock, waits, **flags):
    ca = CertificateAuthority(
        clock=lambda: clock[0],
        upstream_authority=lambda up: AcmPcaAuthority(up, backoff=Backoff(polls=2), sleep=waits.append),
    )
    cfg = ca_config(
        tmp_path / "credentials",
        upstream_authority=double.upstream,
        issuer_ttl="24h",
        auto_rotate="true",
        expiry_check_interval="1h",
        workload_cert_ttl="4h",
        **flags,
    )
    ca.start(cfg)
    return ca


def test_the_first_issuer_is_signed_by_private_ca_and_leaves_verify_to_its_root(tmp_path, double):
    now = datetime.now(UTC)
    ca = start(tmp_path, double, [now], [])
    try:
        bundle = ca.signer.bundle
        assert bundle.trust_anchors == (double.root,) and bundle.root_key is None
        assert bundle.issuer_chain == (bundle.issuer, double.ca)
        bc = bundle.issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert bc.ca and bc.path_length == 0
        assert double.requests[0]["TemplateArn"].endswith("SubordinateCACertificate_PathLen0/V1")
        stored = FileBundleStore(tmp_path / "credentials").load()
        assert stored is not None and ROOT_KEY not in stored.items
        leaf, chain, anchors = sign(ca, now)
        assert chain == [bundle.issuer, double.ca]
        assert verifies(leaf, chain, anchors, now)
        assert x509.load_pem_x509_certificates(anchors) == [double.root]
        pem = lambda *cs: b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cs)  # noqa: E731
        (tmp_path / "anchors.pem").write_bytes(anchors)
        (tmp_path / "chain.pem").write_bytes(pem(*chain))
        (tmp_path / "leaf.pem").write_bytes(pem(leaf))
        result = run_openssl(
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(tmp_path / "anchors.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "leaf.pem"),
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        ca.stop(grace=0)


def test_auto_rotation_renews_the_issuer_through_private_ca_with_no_root_key(tmp_path, double):
    start_at = datetime.now(UTC)
    clock = [start_at]
    ca = start(tmp_path, double, clock, [])
    store = FileBundleStore(tmp_path / "credentials")
    issuers = {ca.signer.bundle.issuer.serial_number}
    leaves = []
    try:
        while clock[0] < start_at + timedelta(days=3):
            clock[0] += STEP
            now = clock[0]
            ca.maintain()
            ready, detail = ca.readiness()
            assert ready, (now, detail)
            bundle = ca.signer.bundle
            issuers.add(bundle.issuer.serial_number)
            leaves.append(sign(ca, now))
            for leaf, chain, anchors in leaves:
                if leaf.not_valid_after_utc > now:
                    assert verifies(leaf, chain, anchors, now), now
            stored = store.load()
            assert stored is not None and ROOT_KEY not in stored.items
            assert bundle.trust_anchors == (double.root,)
    finally:
        ca.stop(grace=0)
    # 24 h issuers over three days: each renewed through IssueCertificate, none by a root key
    issued = {c.serial_number for c in double.issued.values()}
    assert len(issuers) >= 4 and issuers <= issued
    assert len(issued - issuers) <= 1  # at most the one prepared now, not active yet


def test_pending_and_throttling_back_off_and_the_ca_keeps_serving(tmp_path, double, caplog):
    start_at = datetime.now(UTC)
    clock = [start_at]
    waits: list[float] = []
    ca = start(tmp_path, double, clock, waits)
    first = ca.signer.bundle.issuer
    double.calls.clear()
    double.issued.clear()  # what the start asked for
    try:
        double.pending_polls = 10  # a new certificate stays pending for 10 polls
        double.fail["IssueCertificate"].extend(["ThrottlingException"] * 2)
        with caplog.at_level(logging.WARNING, logger="sentryca"):
            for _ in range(14):  # past the prepare margin (12 h left)
                clock[0] += STEP
                ca.maintain()
                assert ca.readiness()[0]
                assert ca.signer.bundle.issuer == first  # serving the current issuer meanwhile
                sign(ca, clock[0])
        messages = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "upstream_failed"]
        assert (
            len(messages) == 1
            and "has not issued" in messages[0]
            and "keeps serving its current issuer" in messages[0]
        )
        assert any("throttled by AWS Private CA" in r.getMessage() for r in caplog.records)
        assert double.calls.count("IssueCertificate") == 3  # two throttled, one issued: never a storm
        assert len(double.issued) == 1
        # a jittered wait after each throttled try (one request each: AWS_MAX_ATTEMPTS=1), then
        # each attempt's polls wait 0.5 s, 1 s
        assert waits[0] <= 1.0 and waits[1] <= 2.0 and waits[2:8] == [0.5, 1.0] * 3
        for _ in range(7):  # issued at the 4th attempt: prepared, active with 4 h of the old one left
            clock[0] += STEP
            ca.maintain()
        assert ca.signer.bundle.issuer in double.issued.values()
        assert len(double.issued) == 1
    finally:
        ca.stop(grace=0)


def test_a_bundle_under_another_root_is_never_sent_to_private_ca(tmp_path, double, caplog):
    """A bundle whose root is not Private CA's and whose key is not held (an operator's PKI):
    nothing is issued, one clear error, and the CA serves its issuer."""
    start_at = datetime.now(UTC)
    clock = [start_at]
    own = ca_config(tmp_path / "credentials", issuer_ttl="24h", expiry_check_interval="1h")
    first = CertificateAuthority(clock=lambda: clock[0])
    first.start(own)  # a bundle of its own root, then the root key taken away
    first.stop(grace=0)
    store = FileBundleStore(tmp_path / "credentials")
    stored = store.load()
    items = {k: v for k, v in stored.items.items() if k != ROOT_KEY}
    assert store.replace(items, stored.version)
    double.calls.clear()
    ca = start(tmp_path, double, clock, [])
    issuer = ca.signer.bundle.issuer
    try:
        with caplog.at_level(logging.ERROR, logger="sentryca"):
            for _ in range(14):
                clock[0] += STEP
                ca.maintain()
                assert ca.readiness()[0] and ca.signer.bundle.issuer == issuer
        assert "IssueCertificate" not in double.calls and not double.issued
        errors = [
            r.getMessage() for r in caplog.records if getattr(r, "problem", "") == "upstream_other_root"
        ]
        assert len(errors) == 1 and "nothing was issued" in errors[0]
    finally:
        ca.stop(grace=0)


def test_a_held_root_key_signs_as_without_an_upstream(tmp_path, double):
    start_at = datetime.now(UTC)
    clock = [start_at]
    own = ca_config(tmp_path / "credentials", issuer_ttl="24h", expiry_check_interval="1h")
    first = CertificateAuthority(clock=lambda: clock[0])
    first.start(own)
    root = first.signer.bundle.trust_anchors
    first.stop(grace=0)
    double.calls.clear()
    ca = start(tmp_path, double, clock, [])
    issuer = ca.signer.bundle.issuer
    try:
        for _ in range(22):
            clock[0] += STEP
            ca.maintain()
        assert ca.signer.bundle.issuer != issuer and ca.signer.bundle.trust_anchors == root
        assert double.calls == []
    finally:
        ca.stop(grace=0)


def test_rotate_issuer_asks_private_ca_when_no_root_key_is_held(tmp_path, double):
    """``sentryca rotate issuer --upstream-authority ...`` (a process of its own, botocore to the
    double): the new issuer is Private CA's, active at once, and leaves still verify."""
    now = datetime.now(UTC)
    ca = start(tmp_path, double, [now], [])
    old = ca.signer.bundle.issuer
    ca.stop(grace=0)
    env = {
        "AWS_ENDPOINT_URL_ACM_PCA": double.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
    }
    store_url = f"file://{tmp_path / 'credentials'}"
    result = run_sentryca(
        "rotate",
        "issuer",
        "--trust-bundle-store",
        store_url,
        "--upstream-authority",
        double.upstream,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"{double.upstream} signed issuer serial" in result.stdout
    stored = FileBundleStore(tmp_path / "credentials").load()
    assert stored is not None and ROOT_KEY not in stored.items
    chain = x509.load_pem_x509_certificates(stored.items["issuer.crt"])
    assert chain[0] != old and chain[0] in double.issued.values() and chain[1] == double.ca
    # denied: a clear message naming the permissions, nothing written
    double.fail["GetCertificateAuthorityCertificate"].append("AccessDeniedException")
    denied = run_sentryca(
        "rotate",
        "issuer",
        "--trust-bundle-store",
        store_url,
        "--upstream-authority",
        double.upstream,
        env=env,
    )
    assert denied.returncode != 0 and "acm-pca:IssueCertificate" in denied.stderr
    assert FileBundleStore(tmp_path / "credentials").load().version == stored.version


def test_bundle_init_with_an_upstream_holds_its_issuer_and_no_root_key(tmp_path, double):
    env = {
        "AWS_ENDPOINT_URL_ACM_PCA": double.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    store_url = f"file://{tmp_path / 'store'}"
    result = run_sentryca(
        "bundle",
        "init",
        "--trust-bundle-store",
        store_url,
        "--upstream-authority",
        double.upstream,
        "--issuer-ttl",
        "24h",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    stored = FileBundleStore(tmp_path / "store").load()
    assert stored is not None and ROOT_KEY not in stored.items
    assert x509.load_pem_x509_certificates(stored.items["ca.crt"]) == [double.root]
    issuer = x509.load_pem_x509_certificates(stored.items["issuer.crt"])[0]
    assert issuer in double.issued.values()


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("AccessDeniedException", "acm-pca:GetCertificateAuthorityCertificate on"),
        ("InvalidStateException", "must be ACTIVE"),
    ],
)
def test_a_first_start_private_ca_refuses_says_why_and_writes_nothing(tmp_path, double, code, says):
    double.fail["IssueCertificate"].append(code)
    ca = CertificateAuthority(clock=lambda: datetime.now(UTC))
    cfg = ca_config(tmp_path / "credentials", upstream_authority=double.upstream)
    with pytest.raises(CAError) as raised:
        ca.start(cfg)
    assert says in str(raised.value) and double.ca_arn in str(raised.value)
    assert FileBundleStore(tmp_path / "credentials").load() is None and not double.issued


def test_the_running_ca_polls_a_few_times_per_check_by_default(tmp_path, double):
    """The default adapter of the upkeep (no injected one): 4 GetCertificate answers per expiry
    check at most (3 waits), the rest at the next check, the same certificate."""
    start_at = datetime.now(UTC)
    clock = [start_at]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(
        ca_config(
            tmp_path / "credentials",
            upstream_authority=double.upstream,
            issuer_ttl="24h",
            auto_rotate="true",
            expiry_check_interval="1h",
            workload_cert_ttl="4h",
        )
    )
    try:
        double.calls.clear()
        double.pending_polls = 5
        clock[0] += timedelta(hours=13)  # past the prepare margin
        ca.maintain()
        assert double.calls.count("GetCertificate") == 4 and ca.readiness()[0]
        clock[0] += STEP
        ca.maintain()
        assert double.calls.count("IssueCertificate") == 1 and double.calls.count("GetCertificate") == 6
    finally:
        ca.stop(grace=0)
