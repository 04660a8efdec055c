"""JWKS issuer rules over the wire (design §6.5): the real CA on loopback with a Dapr-style
Configuration listing an EKS-like issuer whose JWK Set a loopback server serves by OIDC
discovery; the answer's status codes, the audit record and the metric naming the matched rule,
and no token in any log line."""

from __future__ import annotations

import logging
import time

import grpc
import pytest

import sentryca_client as client
from ca_core.config import load_config
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.jwks_server import JwksServer, SigningKey, jwks
from support.pki import make_csr


@pytest.fixture
def issuer(tmp_path):
    key = SigningKey("eks-1", "RS256")
    server = JwksServer(tmp_path / "tls", jwks(key), paths=("/id/EX/keys",)).start()
    iss = server.url_for("/id/EX")
    server.documents["/id/EX/.well-known/openid-configuration"] = {
        "issuer": iss,
        "jwks_uri": server.url_for("/id/EX/keys"),
    }
    yield key, server, iss
    server.stop()


@pytest.fixture
def ca(store_dir, tmp_path, issuer):
    _, server, iss = issuer
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
spec:
  mtls:
    tokenValidators:
      - name: jwks
        options:
          issuers:
            - name: eks-prod
              issuer: {iss}
              caCertificate: {server.ca_pem}
              requestTimeout: 3s
              audiences: [sentryca]
              claims: {{"/kubernetes.io/pod/name": orders-0}}
              namespace: "{{/kubernetes.io/namespace}}"
              appId: "{{/kubernetes.io/serviceaccount/name}}"
"""
    )
    flags = {"issuer_credentials": str(store_dir), "port": "0", "healthz_port": "0", "metrics_port": "0"}
    cfg = load_config(flags | {"mode": "standalone", "config": str(config)}, {}, lambda p: open(p).read())
    ca = CertificateAuthority()
    ca.start(cfg)
    try:
        yield ca
    finally:
        ca.stop(grace=0)


def eks_token(key: SigningKey, iss: str, namespace: str = "payments") -> str:
    now = int(time.time())
    return key.token(
        {
            "aud": ["sentryca"],
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "iss": iss,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": "orders-0", "uid": "8f8e3c1e"},
                "serviceaccount": {"name": "orders", "uid": "c4a1f3d2"},
            },
            "sub": f"system:serviceaccount:{namespace}:orders",
        }
    )


def sign(ca, store_dir, token: str, app_id: str = "orders", namespace: str = "payments"):
    anchors = (store_dir / "ca.crt").read_bytes()
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        return sentry_pb2_grpc.CAStub(chan).SignCertificate(
            sentry_pb2.SignCertificateRequest(
                id=app_id,
                namespace=namespace,
                trust_domain="localhost",
                token=token,
                token_validator=sentry_pb2.SignCertificateRequest.TokenValidator.JWKS,
                certificate_signing_request=make_csr(),
            ),
            timeout=10,
        )


def test_the_matched_rule_is_named_in_the_audit_record_and_the_metric(ca, store_dir, issuer, caplog):
    key, _, iss = issuer
    token = eks_token(key, iss)
    with caplog.at_level(logging.DEBUG):
        resp = sign(ca, store_dir, token)
        with pytest.raises(grpc.RpcError) as e:
            sign(ca, store_dir, token, app_id="billing")
    signed = client.verify_response(resp, (store_dir / "ca.crt").read_bytes())
    assert signed.spiffe_id == "spiffe://localhost/ns/payments/orders"
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "certificate_issued"]
    assert record.validator == "jwks" and record.validator_rule == "eks-prod"
    value = ca.metrics.registry.get_sample_value(
        "sentryca_validator_rule_matches_total", {"validator": "jwks", "rule": "eks-prod"}
    )
    assert value == 1
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details().startswith("issuer rule 'eks-prod': the token maps to")
    assert token.split(".")[1] not in caplog.text and token.split(".")[2] not in caplog.text


def test_no_rule_matches_is_permission_denied_and_the_issuer_down_unavailable(ca, store_dir, issuer):
    key, server, iss = issuer
    with pytest.raises(grpc.RpcError) as e:
        sign(ca, store_dir, eks_token(key, "https://oidc.eks.example.com/id/OTHER"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no issuer rule matches the token's iss" in e.value.details()
    server.status = 503  # before any fetch: the CA holds no key of this issuer
    with pytest.raises(grpc.RpcError) as e:
        sign(ca, store_dir, eks_token(key, iss))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
