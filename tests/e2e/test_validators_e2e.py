"""Validator selection (design §7) and ``sentryca serve`` end to end in each mode, over TLS:
standalone INSECURE, standalone with JWKS, kubernetes (``--kubeconfig`` → the loopback API)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

import sentryca_client as client
from ca_core.config import JwksSettings
from ca_core.errors import ConfigError
from ca_core.validators import TokenValidatorKind
from handlers.composition import build_validators

from support.ca import ca_config
from support.cli import SENTRYCA, serve
from support.jwks_server import JwksServer, SigningKey, claims, jwks
from support.kube import Cluster
from support.kube_api_server import KubeApiServer

INSECURE, KUBERNETES, JWKS = 1, 2, 3


# --- selection rules (in process) ---------------------------------------------------------------


def test_standalone_without_validators_enables_insecure_as_default(tmp_path):
    validators, default = build_validators(ca_config(tmp_path))
    assert list(validators) == [TokenValidatorKind.INSECURE] and default is TokenValidatorKind.INSECURE


def test_standalone_with_jwks_enables_only_jwks_without_default(tmp_path):
    cfg = ca_config(tmp_path).with_changes(jwks=JwksSettings(json.dumps(jwks(SigningKey("k", "ES256")))))
    validators, default = build_validators(cfg)
    assert list(validators) == [TokenValidatorKind.JWKS] and default is None


def test_kubernetes_mode_enables_kubernetes_as_default_and_may_add_jwks(tmp_path):
    with KubeApiServer() as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        cfg = ca_config(tmp_path, mode="kubernetes", kubeconfig=kubeconfig)
        validators, default = build_validators(cfg)
        assert (
            list(validators) == [TokenValidatorKind.KUBERNETES] and default is TokenValidatorKind.KUBERNETES
        )
        cfg = cfg.with_changes(jwks=JwksSettings(json.dumps(jwks(SigningKey("k", "ES256")))))
        validators, default = build_validators(cfg)
        assert set(validators) == {TokenValidatorKind.KUBERNETES, TokenValidatorKind.JWKS}
        assert default is TokenValidatorKind.KUBERNETES
        assert api.requests == []  # building contacts nothing


def test_kubernetes_mode_without_config_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="--kubeconfig"):
        build_validators(ca_config(tmp_path, mode="kubernetes"))


# --- sentryca serve ---------------------------------------------------------------------------------


def test_serve_standalone_insecure(tmp_path):
    ca = serve(tmp_path, "--mode", "standalone")
    try:
        assert ca.wait_ready()["validators"] == ["insecure"]
        assert ca.spiffe_id("orders", "prod") == "spiffe://public/ns/prod/orders"
        for other in (KUBERNETES, JWKS):
            code, details = ca.refused("orders", "prod", token_validator=other)
            assert code is grpc.StatusCode.INVALID_ARGUMENT and "not enabled" in details
        code, _ = ca.refused("bad.id", "prod")
        assert code is grpc.StatusCode.PERMISSION_DENIED
    finally:
        ca.stop()


@pytest.fixture
def jwks_server(tmp_path):
    key = SigningKey("k1", "ES256")
    server = JwksServer(tmp_path / "tls", jwks(key)).start()
    server.key = key
    yield server
    server.stop()


def jwks_config(tmp_path: Path, server: JwksServer) -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n"
        f"      - name: jwks\n        options:\n          source: {server.url}\n"
        f"          caCertificate: {server.ca_pem}\n          minRefreshInterval: 1m\n"
        "          requestTimeout: 5s\n"
    )
    return f


def test_serve_standalone_with_jwks(tmp_path, jwks_server):
    ca = serve(tmp_path, "--mode", "standalone", "--config", str(jwks_config(tmp_path, jwks_server)))
    key, aud = jwks_server.key, "spiffe://localhost/ns/default/dapr-sentry"
    good = key.token(claims("spiffe://public/ns/prod/orders", aud))
    try:
        assert ca.wait_ready()["validators"] == ["jwks"]
        code, details = ca.refused("orders", "prod", token=good)  # no default: must name JWKS
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "must be specified" in details
        assert (
            ca.spiffe_id("orders", "prod", token=good, token_validator=JWKS)
            == "spiffe://public/ns/prod/orders"
        )
        code, details = ca.refused("payments", "prod", token=good, token_validator=JWKS)
        assert code is grpc.StatusCode.PERMISSION_DENIED and "subject mismatch" in details
        bad_aud = key.token(claims("spiffe://public/ns/prod/orders", "someone-else"))
        assert (
            ca.refused("orders", "prod", token=bad_aud, token_validator=JWKS)[0]
            is grpc.StatusCode.PERMISSION_DENIED
        )
        assert ca.refused("orders", "prod", token_validator=INSECURE)[0] is grpc.StatusCode.INVALID_ARGUMENT
        metrics = ca.metrics()
        failure = 'dapr_sentry_cert_sign_failure_total{category="permission_denied",reason='
        assert failure + '"token_subject"} 1.0' in metrics
        assert failure + '"token_audience"} 1.0' in metrics
    finally:
        log = ca.stop()
    assert good not in log and good.split(".")[1] not in log
    assert "subject mismatch" in log


def test_serve_refuses_kubernetes_in_token_validators(tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text("spec: {mtls: {tokenValidators: [{name: kubernetes}]}}\n")
    r = subprocess.run(
        [SENTRYCA, "serve", "--issuer-credentials", str(tmp_path / "c"), "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "'kubernetes' cannot be configured here" in r.stderr


def test_serve_kubernetes_mode_via_kubeconfig(tmp_path, jwks_server):
    with KubeApiServer(bearer_token="admin") as api:
        cluster = Cluster(api)
        cluster.pod("prod", "orders-1", sa="orders", **{"dapr.io/app-id": "orders", "dapr.io/config": "cfg"})
        cluster.configuration("prod", "cfg", "example.org")
        cluster.pod("dapr-system", "injector-0", sa="dapr-injector", **{"dapr.io/control-plane": "injector"})
        token = cluster.token("prod", "orders", "orders-1")
        api.fail(503, path="/version", times=1)  # the first readiness probe finds the API failing
        ca = serve(
            tmp_path,
            "--mode",
            "kubernetes",
            "--kubeconfig",
            str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "--trust-domain",
            "cluster.local",
            "--config",
            str(jwks_config(tmp_path, jwks_server)),
            env={"NAMESPACE": "dapr-system"},
        )
        try:
            status, body = ca.healthz()
            assert status == 503 and "validator_kubernetes" in body["not_ready"], body
            body = ca.wait_ready()
            assert body["validators"] == ["jwks", "kubernetes"]
            assert ca.spiffe_id("orders", "prod", token=token) == "spiffe://example.org/ns/prod/orders"
            cp_token = cluster.token("dapr-system", "dapr-injector", "injector-0")
            signed = client.verify_response(
                ca.sign("dapr-injector", "dapr-system", token=cp_token), ca.anchors
            )
            assert signed.spiffe_id == "spiffe://cluster.local/ns/dapr-system/dapr-injector"
            code, details = ca.refused("payments", "prod", token=token)
            assert code is grpc.StatusCode.PERMISSION_DENIED and "app id mismatch" in details
            code, _ = ca.refused("orders", "prod", token="not.a.token")
            assert code is grpc.StatusCode.PERMISSION_DENIED
            api.fail(500, path="tokenreviews", times=1)
            assert ca.refused("orders", "prod", token=token)[0] is grpc.StatusCode.UNAVAILABLE
            # JWKS is enabled too, by name
            jwt_token = jwks_server.key.token(
                claims("spiffe://public/ns/prod/orders", "spiffe://cluster.local/ns/dapr-system/dapr-sentry")
            )
            assert ca.spiffe_id("orders", "prod", token=jwt_token, token_validator=JWKS) == (
                "spiffe://public/ns/prod/orders"
            )
            assert (
                ca.refused("orders", "prod", token_validator=INSECURE)[0] is grpc.StatusCode.INVALID_ARGUMENT
            )
        finally:
            log = ca.stop()
        assert api.requests, "the CA never called the API"
    assert token not in log and token.split(".")[1] not in log and cp_token not in log


def test_serve_kubernetes_mode_api_down_is_unavailable_and_not_ready(tmp_path):
    api = KubeApiServer().start()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.stop()
    ca = serve(tmp_path, "--mode", "kubernetes", "--kubeconfig", str(kubeconfig))
    try:
        status, body = ca.healthz()
        assert status == 503 and "unreachable" in body["validator_kubernetes"]
        code, _ = ca.refused("orders", "default", token="a.b.c")
        assert code is grpc.StatusCode.UNAVAILABLE
    finally:
        ca.stop()
