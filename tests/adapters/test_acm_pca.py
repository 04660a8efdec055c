"""adapters.acm_pca against the loopback Private CA double (support.acmpca_double): botocore speaks
AWS JSON 1.1 to it through its endpoint URL; the double signs with a real key as the path-length-0
subordinate template says. Waits are recorded by an injected sleep, never slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from adapters.acm_pca import AcmPcaAuthority, Backoff, UpstreamPending, bounded_authority
from ca_core.errors import CAError, PermissionDenied, Unavailable
from ca_core.keys import KeyAlgorithm
from ca_core.spiffe_id import SpiffeId
from ca_core.upstream import SUBORDINATE_PATHLEN0_TEMPLATE, accept_issued, issuer_request, parse_upstream

from support.acmpca_double import AcmPcaDouble

SDK_TRIES = 1  # per call of the adapter, with AWS_MAX_ATTEMPTS=1 (below)
ID = SpiffeId("example.org", "dapr-system", "dapr-sentry")


def authority(double, waits: list[float], **backoff) -> AcmPcaAuthority:
    return AcmPcaAuthority(
        double.upstream, backoff=Backoff(**backoff), sleep=waits.append, random=lambda: 1.0
    )


def request(now, lifetime=timedelta(hours=24)):
    return issuer_request(ID, KeyAlgorithm.ECDSA_P256, now, lifetime=lifetime, backdate=timedelta(minutes=15))


def test_the_issuer_is_a_pathlen_0_subordinate_with_the_validity_asked_for(double):
    now = datetime.now(UTC).replace(microsecond=0)
    waits: list[float] = []
    req = request(now)
    cert, chain = authority(double, waits).issue_issuer(req)
    assert double.calls == ["GetCertificateAuthorityCertificate", "IssueCertificate", "GetCertificate"]
    sent = double.requests[0]
    assert (
        sent["TemplateArn"] == SUBORDINATE_PATHLEN0_TEMPLATE and sent["SigningAlgorithm"] == "SHA256WITHECDSA"
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    assert cert.subject == x509.load_pem_x509_csr(req.csr_pem).subject
    assert cert.not_valid_before_utc == now - timedelta(minutes=15)
    assert cert.not_valid_after_utc == now + timedelta(hours=24)
    issuer_chain, roots = accept_issued(req, cert, chain, now)
    assert issuer_chain == (cert, double.ca) and roots == (double.root,)
    assert waits == []


def test_validity_is_cut_to_the_private_ca_s_own(double):
    now = datetime.now(UTC)
    cert, _ = authority(double, []).issue_issuer(request(now, lifetime=timedelta(days=20000)))
    assert cert.not_valid_after_utc <= double.ca.not_valid_after_utc


def test_pending_is_polled_with_growing_waits_then_handed_back_to_resume(double):
    double.pending_polls = 5
    now = datetime.now(UTC)
    waits: list[float] = []
    pca = authority(double, waits, polls=3)
    req = request(now)
    with pytest.raises(UpstreamPending) as raised:
        pca.issue_issuer(req)
    assert waits == [0.5, 1.0, 2.0]  # doubling, bounded by the number of polls
    assert double.calls.count("GetCertificate") == 4 and double.calls.count("IssueCertificate") == 1
    assert "has not issued" in str(raised.value) and "keeps serving its current issuer" in str(raised.value)
    # the next attempt polls the same certificate: no second IssueCertificate
    cert, _ = pca.issue_issuer(req, resume=raised.value.certificate_arn)
    assert double.calls.count("IssueCertificate") == 1 and cert in double.issued.values()


def test_throttling_backs_off_a_bounded_number_of_times_with_a_clear_message(double):
    double.fail["IssueCertificate"].extend(["ThrottlingException"] * 10)
    waits: list[float] = []
    with pytest.raises(Unavailable) as raised:
        authority(double, waits, attempts=4).issue_issuer(request(datetime.now(UTC)))
    assert raised.value.reason == "upstream_throttled"
    assert "throttled by AWS Private CA" in str(raised.value) and "4 times" in str(raised.value)
    assert waits == [1.0, 2.0, 4.0]  # full jitter's upper bounds (random=1.0), doubling
    # never more than the bound: 4 tries of the adapter, each of the SDK's 2
    assert double.calls.count("IssueCertificate") == 4 * SDK_TRIES


def test_throttling_then_success_issues_one_certificate(double):
    double.fail["IssueCertificate"].extend(["ThrottlingException"] * 2 * SDK_TRIES)
    double.fail["GetCertificate"].extend(["ThrottlingException"] * SDK_TRIES)
    waits: list[float] = []
    authority(double, waits).issue_issuer(request(datetime.now(UTC)))
    assert len(double.issued) == 1 and waits == [1.0, 2.0, 1.0]


def test_bounded_calls_end_at_the_timeout_after_the_attempts_asked_for_with_the_sdk_retries_off(double):
    """``bounded_authority`` (--upstream-timeout, --upstream-max-attempts): a Private CA that accepts
    each request and says nothing costs each try its read timeout, and a call is sent exactly the
    attempts asked for; throttling likewise (AWS_MAX_ATTEMPTS=1 would make 2 requests of each try:
    the SDK's own retries are off, this adapter's backoff makes them)."""
    double.stall()
    try:
        with pytest.raises(Unavailable) as raised:
            bounded_authority(double.upstream, 0.2, 3, cap=0.01).issue_issuer(request(datetime.now(UTC)))
    finally:
        double.release()
    message = str(raised.value)
    assert raised.value.reason == "upstream_unreachable" and "cannot reach AWS Private CA" in message
    assert "3 times," in message and "SDK's own retries" not in message
    assert double.held_in_all == 3  # each try one request, each ended by the client's read timeout
    double.fail["IssueCertificate"].extend(["ThrottlingException"] * 10)
    with pytest.raises(Unavailable) as raised:
        bounded_authority(double.upstream, 5, 2, cap=0.01).issue_issuer(request(datetime.now(UTC)))
    assert raised.value.reason == "upstream_throttled" and "2 times," in str(raised.value)
    assert double.calls.count("IssueCertificate") == 2


def test_a_retried_issue_with_the_same_csr_is_one_certificate(double):
    now = datetime.now(UTC)
    req = request(now)
    pca = authority(double, [])
    a, _ = pca.issue_issuer(req)
    b, _ = pca.issue_issuer(req)
    assert a == b and len(double.issued) == 1  # the idempotency token


def test_access_denied_names_the_permissions_and_is_not_retried(double):
    double.fail["GetCertificateAuthorityCertificate"].append("AccessDeniedException")
    waits: list[float] = []
    with pytest.raises(PermissionDenied) as raised:
        authority(double, waits).issue_issuer(request(datetime.now(UTC)))
    message = str(raised.value)
    assert "acm-pca:IssueCertificate" in message and double.ca_arn in message
    assert waits == [] and double.calls == ["GetCertificateAuthorityCertificate"]


def test_a_disabled_ca_says_it_must_be_active(double):
    double.state = "DISABLED"
    with pytest.raises(CAError) as raised:
        authority(double, []).issue_issuer(request(datetime.now(UTC)))
    assert raised.value.reason == "upstream_invalid_state" and "must be ACTIVE" in str(raised.value)
    assert "describe-certificate-authority" in str(raised.value)


def test_a_root_private_ca_chain_ends_at_itself(monkeypatch):
    with AcmPcaDouble(hierarchy="root") as d:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ACM_PCA", d.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        now = datetime.now(UTC)
        req = request(now)
        cert, chain = AcmPcaAuthority(d.upstream).issue_issuer(req)
        assert accept_issued(req, cert, chain, now) == ((cert,), (d.root,))


@pytest.mark.parametrize(
    "text",
    [
        "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/x",  # no scheme
        "acm-pca://arn:aws:acm-pca:us-east-1:1234:certificate-authority/x",  # account
        "acm-pca://arn:aws:kms:us-east-1:123456789012:key/x",  # service
        "acm-pca://arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/",
    ],
)
def test_upstream_urls_are_checked(text):
    with pytest.raises(ValueError, match="acm-pca://arn:aws:acm-pca:REGION"):
        parse_upstream(text)
