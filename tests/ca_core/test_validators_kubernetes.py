"""KUBERNETES validator (design §6, §3 step 2) with the real ``kubernetes`` client talking HTTP to
the loopback API server of ``support/kube_api_server.py``: TokenReview, pods, Dapr Configurations."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from cryptography import x509

from adapters.kube_api import PROBE_INTERVAL, KubernetesApi
from ca_core.errors import ConfigError, PermissionDenied, Unavailable
from ca_core.service import Signer, SigningPolicy
from ca_core.spiffe_id import SpiffeId
from ca_core.validators import SignRequest, TokenValidatorKind, validator_readiness
from ca_core.validators.kubernetes import KubernetesValidator

from support.kube import Cluster
from support.kube_api_server import KubeApiServer
from support.pki import make_bundle, make_csr

CA_NS = "dapr-system"
CA_ID = SpiffeId("cluster.local", CA_NS, "dapr-sentry")
DEFAULT_AUDIENCES = ["dapr.io/sentry", "spiffe://cluster.local/ns/dapr-system/dapr-sentry"]


@pytest.fixture
def cluster():
    with KubeApiServer(bearer_token="test-admin-token") as server:
        yield Cluster(server)


def make_validator(cluster: Cluster, tmp_path, audiences=None, timeout: float = 5.0) -> KubernetesValidator:
    kubeconfig = cluster.server.write_kubeconfig(tmp_path / "kubeconfig")
    return KubernetesValidator(KubernetesApi.connect(str(kubeconfig), timeout), CA_ID, audiences)


@pytest.fixture
def validator(cluster, tmp_path):
    return make_validator(cluster, tmp_path)


def req(app_id: str, ns: str, token: str, trust_domain: str = "") -> SignRequest:
    return SignRequest(app_id, ns, make_csr(), trust_domain=trust_domain, token=token, token_validator=2)


def denied(validator, request, reason: str) -> str:
    with pytest.raises(PermissionDenied) as e:
        validator.validate(request)
    assert e.value.reason == reason, str(e.value)
    return str(e.value)


def test_success_with_the_app_id_annotation(cluster, validator):
    cluster.pod("prod", "orders-7d9f", sa="orders-sa", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "orders-sa", "orders-7d9f")
    identity = validator.validate(req("orders", "prod", token, trust_domain="ignored.example"))
    assert str(identity.spiffe_id) == "spiffe://public/ns/prod/orders"  # request's trust domain ignored


def test_success_by_pod_name_without_annotation(cluster, validator):
    cluster.pod("prod", "worker", sa="default")
    token = cluster.token("prod", "default", "worker")
    assert str(validator.validate(req("worker", "prod", token)).spiffe_id) == "spiffe://public/ns/prod/worker"


def test_wrong_app_id_names_expected_and_received(cluster, validator):
    cluster.pod("prod", "orders-7d9f", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", "orders-7d9f")
    message = denied(validator, req("payments", "prod", token), "app_id_mismatch")
    assert "'orders'" in message and "'payments'" in message


def test_namespace_mismatch(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    cluster.pod("staging", "orders", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", "orders")
    message = denied(validator, req("orders", "staging", token), "namespace_mismatch")
    assert "'prod'" in message and "'staging'" in message


def test_service_account_mismatch(cluster, validator):
    cluster.pod("prod", "orders", sa="orders-sa", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "other-sa", "orders")
    message = denied(validator, req("orders", "prod", token), "service_account_mismatch")
    assert "orders-sa" in message and "other-sa" in message


def test_token_review_not_authenticated(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", "orders")
    cluster.reviews.tokens.pop(token)  # the API server does not know this token
    denied(validator, req("orders", "prod", token), "token_not_authenticated")


def test_token_bound_to_another_audience_is_not_authenticated(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", "orders")
    cluster.reviews.audiences[token] = {"https://kubernetes.default.svc"}
    denied(validator, req("orders", "prod", token), "token_not_authenticated")


def test_token_review_status_error(cluster, validator):
    token = cluster.token("prod", "default", "orders")
    cluster.reviews.tokens[token] = {"error": "token has been invalidated"}
    assert "invalidated" in denied(validator, req("orders", "prod", token), "token_review_error")


def test_user_that_is_not_a_service_account(cluster, validator):
    token = cluster.token("prod", "default", "orders")
    cluster.reviews.tokens[token] = "kubernetes-admin"
    denied(validator, req("orders", "prod", token), "token_not_service_account")


def test_missing_pod_claim(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", None)  # a legacy, unbound token
    denied(validator, req("orders", "prod", token), "pod_claim_missing")


def test_missing_pod(cluster, validator):
    token = cluster.token("prod", "default", "gone-pod")
    assert "prod/gone-pod" in denied(validator, req("gone-pod", "prod", token), "pod_not_found")


def test_empty_token_is_refused_before_any_api_call(cluster, validator):
    denied(validator, req("orders", "prod", ""), "token_missing")
    assert cluster.server.requests == []


def test_common_checks_come_first(cluster, validator):
    token = cluster.token("prod", "default", "orders")
    denied(validator, req("bad.id", "Prod", token), "invalid_identity")
    assert cluster.server.requests == []


def test_trust_domain_from_the_configuration(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"})
    cluster.configuration("prod", "appconfig", "example.org")
    token = cluster.token("prod", "default", "orders")
    assert (
        str(validator.validate(req("orders", "prod", token)).spiffe_id)
        == "spiffe://example.org/ns/prod/orders"
    )


def test_configuration_without_trust_domain_gives_public(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"})
    cluster.configuration("prod", "appconfig", None)
    token = cluster.token("prod", "default", "orders")
    assert validator.validate(req("orders", "prod", token)).spiffe_id.trust_domain == "public"


@pytest.mark.parametrize("trust_domain", ["Not A Domain", "a..b", "example.org."])
def test_configuration_with_an_invalid_trust_domain_is_denied(cluster, validator, trust_domain):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"})
    cluster.configuration("prod", "appconfig", trust_domain)
    denied(
        validator,
        req("orders", "prod", cluster.token("prod", "default", "orders")),
        "config_trust_domain_invalid",
    )


def test_empty_config_annotation_is_denied(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": ""})
    denied(
        validator,
        req("orders", "prod", cluster.token("prod", "default", "orders")),
        "config_annotation_empty",
    )


def test_missing_configuration_is_denied(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "nope"})
    message = denied(
        validator, req("orders", "prod", cluster.token("prod", "default", "orders")), "config_not_found"
    )
    assert "prod/nope" in message


def test_control_plane_pod_gets_the_ca_trust_domain_and_dns_sans(cluster, validator):
    cluster.pod(
        CA_NS, "dapr-sidecar-injector-5f", sa="dapr-injector", **{"dapr.io/control-plane": "injector"}
    )
    # a Configuration annotation is not consulted for the control plane
    token = cluster.token(CA_NS, "dapr-injector", "dapr-sidecar-injector-5f")
    request = req("dapr-injector", CA_NS, token)
    assert str(validator.validate(request).spiffe_id) == "spiffe://cluster.local/ns/dapr-system/dapr-injector"
    signer = Signer(
        make_bundle(trust_domain="cluster.local"),
        SigningPolicy(trust_domain="cluster.local", namespace=CA_NS),
        {TokenValidatorKind.KUBERNETES: validator},
        TokenValidatorKind.KUBERNETES,
    )
    from support.pki import NOW

    leaf = signer.sign(req("dapr-injector", CA_NS, token), NOW).certificate
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dapr-sidecar-injector.dapr-system.svc"]


def test_control_plane_trust_domain_ignores_the_pods_configuration(cluster, validator):
    """design §6: the control plane's trust domain is the CA's own, whatever dapr.io/config says."""
    cluster.configuration(CA_NS, "appconfig", "elsewhere.org")
    cluster.pod(
        CA_NS,
        "dapr-operator-7d",
        sa="dapr-operator",
        **{"dapr.io/control-plane": "operator", "dapr.io/config": "appconfig"},
    )
    token = cluster.token(CA_NS, "dapr-operator", "dapr-operator-7d")
    identity = validator.validate(req("dapr-operator", CA_NS, token))
    assert str(identity.spiffe_id) == "spiffe://cluster.local/ns/dapr-system/dapr-operator"


def test_control_plane_sentry_identity_stays_reserved(cluster, validator):
    cluster.pod(CA_NS, "dapr-sentry-0", sa="dapr-sentry", **{"dapr.io/control-plane": "sentry"})
    token = cluster.token(CA_NS, "dapr-sentry", "dapr-sentry-0")
    signer = Signer(
        make_bundle(trust_domain="cluster.local"),
        SigningPolicy(trust_domain="cluster.local", namespace=CA_NS),
        {TokenValidatorKind.KUBERNETES: validator},
        TokenValidatorKind.KUBERNETES,
    )
    with pytest.raises(PermissionDenied) as e:
        signer.sign(req("dapr-sentry", CA_NS, token), datetime.now(UTC))
    assert e.value.reason == "reserved_identity"


@pytest.mark.parametrize(
    ("ns", "annotations", "reason"),
    [
        ("prod", {"dapr.io/control-plane": "operator"}, "control_plane_namespace"),
        (CA_NS, {"dapr.io/control-plane": "mallory"}, "control_plane_unknown"),
        (
            CA_NS,
            {"dapr.io/control-plane": "operator", "dapr.io/app-id": "dapr-operator"},
            "control_plane_app_id",
        ),
    ],
)
def test_control_plane_misuse_is_denied(cluster, validator, ns, annotations, reason):
    cluster.pod(ns, "cp", **annotations)
    denied(validator, req("dapr-operator", ns, cluster.token(ns, "default", "cp")), reason)


def test_default_audiences_are_sent(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    validator.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    assert cluster.reviews.seen == [DEFAULT_AUDIENCES]


def test_token_audience_option_replaces_the_defaults(cluster, tmp_path):
    v = make_validator(cluster, tmp_path, audiences=("aud-one", "aud-two"))
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    v.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    assert cluster.reviews.seen == [["aud-one", "aud-two"]]


def test_the_client_authenticates_to_the_api(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    validator.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    assert {r.headers.get("authorization") for r in cluster.server.requests} == {"Bearer test-admin-token"}
    assert [(r.method, r.path) for r in cluster.server.requests] == [
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews"),
        ("GET", "/api/v1/namespaces/prod/pods/orders"),
    ]


@pytest.mark.parametrize("status", [500, 503, 403, 429])
@pytest.mark.parametrize("path", ["tokenreviews", "pods", "configurations"])
def test_api_errors_are_unavailable(cluster, validator, status, path):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"})
    cluster.configuration("prod", "appconfig", "example.org")
    cluster.server.fail(status, path=path)
    with pytest.raises(Unavailable) as e:
        validator.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    assert e.value.reason == "kubernetes_unavailable" and str(status) in str(e.value)


def test_unauthorized_client_is_unavailable(cluster, tmp_path):
    kubeconfig = cluster.server.write_kubeconfig(tmp_path / "kubeconfig", token="wrong-token")
    v = KubernetesValidator(KubernetesApi.connect(str(kubeconfig)), CA_ID)
    with pytest.raises(Unavailable, match="401"):
        v.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))


def test_api_server_down_is_unavailable(tmp_path):
    server = KubeApiServer().start()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    server.stop()  # nothing listens on the port now
    v = KubernetesValidator(KubernetesApi.connect(str(kubeconfig), 2.0), CA_ID)
    with pytest.raises(Unavailable, match="unreachable"):
        v.validate(req("orders", "prod", "a.b.c"))
    ready, detail = validator_readiness(v)
    assert not ready and "unreachable" in detail


def test_hanging_api_times_out_as_unavailable(cluster, tmp_path):
    v = make_validator(cluster, tmp_path, timeout=0.5)
    cluster.server.fail(hang=True, path="tokenreviews")
    with pytest.raises(Unavailable, match="unreachable"):
        v.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    cluster.server.release_hangs()


def test_not_ready_until_the_api_first_answers(cluster, tmp_path):
    clock = [100.0]
    kubeconfig = str(cluster.server.write_kubeconfig(tmp_path / "kubeconfig"))
    api = KubernetesApi.connect(kubeconfig, clock=lambda: clock[0])
    v = KubernetesValidator(api, CA_ID)
    cluster.server.fail(503, path="/version", times=1)
    ready, detail = v.ready()
    assert not ready and "503" in detail
    clock[0] += PROBE_INTERVAL  # the next probe is due
    assert v.ready() == (True, "Kubernetes API reachable")
    assert [r.path for r in cluster.server.requests].count("/version/") == 2


def test_a_sign_request_answered_by_the_api_makes_it_ready(cluster, validator):
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    validator.validate(req("orders", "prod", cluster.token("prod", "default", "orders")))
    assert validator.ready()[0]
    assert all(r.path != "/version/" for r in cluster.server.requests)


def test_tokens_are_never_logged(cluster, validator, caplog):
    caplog.set_level(logging.DEBUG)
    cluster.pod("prod", "orders", **{"dapr.io/app-id": "orders"})
    token = cluster.token("prod", "default", "orders")
    validator.validate(req("orders", "prod", token))
    for failing in (500, 401):
        cluster.server.fail(failing, path="tokenreviews", times=1)
        with pytest.raises(Unavailable) as e:
            validator.validate(req("orders", "prod", token))
        assert token not in str(e.value)
    denied(validator, req("payments", "prod", token), "app_id_mismatch")
    assert token not in caplog.text
    assert token.split(".")[1] not in caplog.text


def test_unloadable_kubeconfig_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--kubeconfig"):
        KubernetesApi.connect(str(tmp_path / "missing"))
    (tmp_path / "bad").write_text("clusters: []\n")
    with pytest.raises(ConfigError, match="--kubeconfig"):
        KubernetesApi.connect(str(tmp_path / "bad"))


def test_in_cluster_config_missing_is_a_config_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match=r"in-cluster.*--kubeconfig"):
        KubernetesApi.connect(None)
