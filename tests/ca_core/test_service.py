"""Signer: design §3's order of checks and the error class of each failure."""

from datetime import timedelta

import pytest
from cryptography import x509

from ca_core.errors import FailedPrecondition, InvalidRequest, PermissionDenied
from ca_core.service import Signer, SigningPolicy
from ca_core.validators import InsecureValidator, SignRequest, TokenValidatorKind

from support.pki import NOW, bundle_with_issuer_window, make_bundle, make_csr

BUNDLE = make_bundle()
CSR = make_csr()


def signer(default=TokenValidatorKind.INSECURE, **policy):
    return Signer(
        BUNDLE, SigningPolicy(**policy), {TokenValidatorKind.INSECURE: InsecureValidator()}, default
    )


def req(**kw):
    base = {"app_id": "orders", "namespace": "prod", "csr_pem": CSR}
    return SignRequest(**(base | kw))


def uris(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def test_insecure_signs_with_the_requested_or_public_trust_domain():
    s = signer()
    assert uris(s.sign(req(), NOW).certificate) == ["spiffe://public/ns/prod/orders"]
    assert uris(s.sign(req(trust_domain="example.org"), NOW).certificate) == [
        "spiffe://example.org/ns/prod/orders"
    ]


def test_response_shape():
    result = signer().sign(req(), NOW)
    chain = x509.load_pem_x509_certificates(result.chain_pem)
    assert chain[0] == result.certificate and chain[1:] == list(BUNDLE.issuer_chain)
    assert BUNDLE.trust_anchors[0] not in chain  # never the self-signed root
    assert result.anchors_pem == BUNDLE.anchors_pem
    assert result.not_after == result.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    "number, reason",
    [
        (7, "validator_unknown"),
        (-1, "validator_unknown"),
        (2, "validator_not_enabled"),
        (3, "validator_not_enabled"),
    ],
)
def test_validator_choice_errors_are_invalid_argument(number, reason):
    with pytest.raises(InvalidRequest) as e:
        signer().sign(req(token_validator=number), NOW)
    assert e.value.reason == reason


def test_no_default_and_none_requested():
    with pytest.raises(InvalidRequest, match="a validator name must be specified"):
        signer(default=None).sign(req(), NOW)


def test_explicit_insecure_works_without_default():
    assert signer(default=None).sign(req(token_validator=1), NOW).certificate


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"csr_pem": b""}, "certificate_signing_request field is empty"),
        ({"app_id": ""}, "app id is empty"),
        ({"app_id": "a.b"}, "'.'"),
        ({"app_id": "a" * 65}, "64"),
        ({"namespace": ""}, "namespace is empty"),
        ({"namespace": "Not_A_Label"}, "DNS label"),
        ({"trust_domain": "Not Valid"}, "trust domain"),
    ],
)
def test_identity_problems_are_permission_denied(kw, words):
    with pytest.raises(PermissionDenied) as e:
        signer().sign(req(**kw), NOW)
    assert words in str(e.value)


def test_several_problems_are_reported_together():
    with pytest.raises(PermissionDenied) as e:
        signer().sign(req(app_id="", namespace="", csr_pem=b""), NOW)
    assert str(e.value).count(";") >= 2


def test_identity_is_checked_before_the_csr():
    """design §3: a bad id with a bad CSR is PERMISSION_DENIED, not INVALID_ARGUMENT."""
    with pytest.raises(PermissionDenied):
        signer().sign(req(app_id="a.b", csr_pem=b"junk"), NOW)


def test_bad_csr_with_good_identity_is_invalid_argument():
    with pytest.raises(InvalidRequest):
        signer().sign(req(csr_pem=b"junk"), NOW)


@pytest.mark.parametrize("td", ["", "localhost", "other.org"])
def test_the_cas_own_identity_is_reserved(td):
    with pytest.raises(PermissionDenied, match="CA's own identity") as e:
        signer(namespace="dapr-system").sign(
            req(app_id="dapr-sentry", namespace="dapr-system", trust_domain=td), NOW
        )
    assert e.value.reason == "reserved_identity"


def test_dapr_sentry_in_another_namespace_is_just_an_app():
    result = signer(namespace="dapr-system").sign(req(app_id="dapr-sentry", namespace="prod"), NOW)
    assert uris(result.certificate) == ["spiffe://public/ns/prod/dapr-sentry"]


@pytest.mark.parametrize(
    "app_id, dns",
    [
        ("dapr-injector", ["dapr-sidecar-injector.dapr-system.svc"]),
        ("dapr-operator", ["dapr-webhook.dapr-system.svc"]),
        (
            "dapr-scheduler",
            [
                f"dapr-scheduler-server-{i}.dapr-scheduler-server.dapr-system.svc.cluster.local"
                for i in range(3)
            ],
        ),
        ("dapr-placement", []),
    ],
)
def test_control_plane_dns_sans(app_id, dns):
    ca = signer(namespace="dapr-system", cluster_domain="cluster.local")
    cert = ca.sign(req(app_id=app_id, namespace="dapr-system"), NOW).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns


@pytest.mark.parametrize(
    "policy, domain",
    [
        ({"cluster_domain": "corp.example", "trust_domain": "td.example"}, "corp.example"),
        ({"trust_domain": "td.example"}, "td.example"),  # no cluster domain: the trust domain
    ],
)
def test_the_scheduler_sans_end_in_the_policys_cluster_domain(policy, domain):
    ca = signer(namespace="dapr-system", **policy)
    cert = ca.sign(req(app_id="dapr-scheduler", namespace="dapr-system"), NOW).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        f"dapr-scheduler-server-{i}.dapr-scheduler-server.dapr-system.svc.{domain}" for i in range(3)
    ]


def test_control_plane_names_outside_the_ca_namespace_get_no_dns_sans():
    cert = (
        signer(namespace="dapr-system").sign(req(app_id="dapr-injector", namespace="prod"), NOW).certificate
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []


def test_policy_ttl_is_used():
    cert = signer(workload_ttl=timedelta(hours=3)).sign(req(), NOW).certificate
    assert cert.not_valid_after_utc == NOW + timedelta(hours=3)


def test_expired_issuer_is_failed_precondition_after_identity_checks():
    expired = bundle_with_issuer_window(NOW - timedelta(days=30), NOW - timedelta(days=1), NOW)
    s = Signer(
        expired,
        SigningPolicy(),
        {TokenValidatorKind.INSECURE: InsecureValidator()},
        TokenValidatorKind.INSECURE,
    )
    with pytest.raises(FailedPrecondition):
        s.sign(req(), NOW)
    with pytest.raises(PermissionDenied):  # identity failures still come first
        s.sign(req(app_id=""), NOW)
