"""JWKS issuer rules with claim mapping (design §6.5): tokens shaped like real EKS service-account,
GitHub Actions and Google ID tokens (the claim sets of their public documentation), signed by real
keys served from a loopback JWKS server over HTTPS, found by OIDC discovery, or given inline; the
validators built from a Dapr-style Configuration by the composition root, as the CA builds them."""

from __future__ import annotations

import json
import logging
import time

import jwt as pyjwt
import pytest

from ca_core.config import load_config
from ca_core.errors import ConfigError, PermissionDenied, Unavailable
from ca_core.validators import SignRequest, TokenValidatorKind
from handlers.composition import build_validators

from support.jwks_server import JwksServer, SigningKey, jwks
from support.pki import make_csr

EKS_ISS = "https://oidc.eks.us-west-2.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
GOOGLE_ISS = "https://accounts.google.com"
CA_ID = "spiffe://localhost/ns/default/dapr-sentry"  # the test CA's SPIFFE ID (default trust domain)


def eks_claims(now: int, **over) -> dict:
    """A projected service-account token of EKS (IRSA), as AWS documents it."""
    return {
        "aud": ["sentryca"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": EKS_ISS,
        "kubernetes.io": {
            "namespace": "payments",
            "pod": {"name": "orders-7c9d8-x2x4q", "uid": "8f8e3c1e-8a6b-4b6e-9d35-2c55c1c6a1a4"},
            "serviceaccount": {"name": "orders", "uid": "c4a1f3d2-6b0e-4a8c-a0d1-7e8c5b1f2d3e"},
        },
        "sub": "system:serviceaccount:payments:orders",
    } | over


def github_claims(iss: str, now: int, **over) -> dict:
    """A GitHub Actions OIDC token, as GitHub documents it ("Understanding the OIDC token"); ``iss``
    is the loopback server standing in for https://token.actions.githubusercontent.com."""
    return {
        "jti": "example-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "https://github.com/octo-org",
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "example-run-id",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "example-workflow",
        "head_ref": "",
        "base_ref": "",
        "event_name": "workflow_dispatch",
        "ref_type": "branch",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "iss": iss,
        "nbf": now - 5,
        "exp": now + 300,
        "iat": now,
    } | over


def google_claims(now: int, **over) -> dict:
    """A Google-signed ID token of a service account, as Google documents it."""
    return {
        "aud": "https://sentryca.example.com",
        "azp": "113774264463038321964",
        "email": "orders@my-project.iam.gserviceaccount.com",
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": GOOGLE_ISS,
        "sub": "113774264463038321964",
    } | over


class World:
    """The issuers' keys and servers: EKS's JWKS at a URL, GitHub's by OIDC discovery (the
    same loopback server), Google's inline; ``validator`` built from the YAML of :meth:`yaml`."""

    def __init__(self, tmp_path) -> None:
        self.eks, self.gh, self.google = (
            SigningKey("eks-1", "RS256"),
            SigningKey("gh-1", "RS256"),
            SigningKey("g-1", "RS256"),
        )
        self.legacy = SigningKey("legacy-1", "ES256")
        self.server = JwksServer(tmp_path / "tls", jwks(self.eks), paths=("/eks/keys.json",)).start()
        self.base = self.server.url_for("/gh")
        self.server.documents.update(
            {
                "/gh/.well-known/openid-configuration": {
                    "issuer": self.base,
                    "jwks_uri": self.server.url_for("/gh/jwks"),
                },
                "/gh/jwks": jwks(self.gh),
                "/legacy/jwks": jwks(self.legacy),
            }
        )
        self.tmp = tmp_path

    def yaml(self, *, eks_extra: str = "") -> str:
        return f"""
spec:
  mtls:
    tokenValidators:
      - name: jwks
        options:
          caCertificate: {self.server.ca_pem}
          requestTimeout: 3s
          issuers:
            - name: eks
              issuer: {EKS_ISS}
              source: {self.server.url_for("/eks/keys.json")}
              audiences: [sentryca]
              namespace: "{{/kubernetes.io/namespace}}"
              appId: "{{/kubernetes.io/serviceaccount/name}}"{eks_extra}
            - name: github
              issuer: {self.base}
              audiences: https://github.com/octo-org
              claims:
                repository_owner: octo-org
                /ref: refs/heads/main
              namespace: gh-{{/repository_owner}}
              appId: repo-{{/repository_id}}
              trustDomain: ci.example.org
            - name: google
              issuer: {GOOGLE_ISS}
              source: '{json.dumps(jwks(self.google))}'
              audiences: [https://sentryca.example.com]
              claims: {{email: orders@my-project.iam.gserviceaccount.com, email_verified: true}}
              namespace: gcp
              appId: "{{/sub}}"
            - name: legacy
              issuer: https://legacy.example.com
              source: {self.server.url_for("/legacy/jwks")}
"""

    def validator(self, text: str | None = None):
        files = {"c.yaml": text or self.yaml()}
        cfg = load_config({"config": "c.yaml", "mode": "standalone"}, {}, files.__getitem__)
        validators, default = build_validators(cfg)
        assert default is None and set(validators) == {TokenValidatorKind.JWKS}
        return validators[TokenValidatorKind.JWKS]


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.server.stop()


def req(token: str, app_id: str, ns: str, trust_domain: str = "") -> SignRequest:
    return SignRequest(app_id, ns, make_csr(), trust_domain=trust_domain, token=token, token_validator=3)


def denied(validator, request, reason: str) -> str:
    with pytest.raises(PermissionDenied) as e:
        validator.validate(request)
    assert e.value.reason == reason, str(e.value)
    assert request.token not in str(e.value)
    return str(e.value)


NOW = int(time.time())


def test_each_issuers_tokens_map_to_their_identity(world):
    v = world.validator()
    eks = v.validate(req(world.eks.token(eks_claims(NOW)), "orders", "payments", "localhost"))
    assert str(eks.spiffe_id) == "spiffe://localhost/ns/payments/orders" and eks.rule == "eks"
    gh = v.validate(
        req(world.gh.token(github_claims(world.base, NOW)), "repo-74", "gh-octo-org", "ci.example.org")
    )
    assert str(gh.spiffe_id) == "spiffe://ci.example.org/ns/gh-octo-org/repo-74" and gh.rule == "github"
    g = v.validate(req(world.google.token(google_claims(NOW)), "113774264463038321964", "gcp", "localhost"))
    assert g.rule == "google"
    # the default mapping (no templates): sub is the SPIFFE ID, aud holds the CA's SPIFFE ID
    legacy = {"iss": "https://legacy.example.com", "sub": "spiffe://public/ns/prod/orders", "aud": [CA_ID]}
    token = world.legacy.token(legacy | {"iat": NOW, "exp": NOW + 60})
    assert v.validate(req(token, "orders", "prod")).rule == "legacy"
    assert v.ready()[0]


def test_a_token_of_no_configured_issuer_is_denied_naming_the_rules(world):
    v = world.validator()
    token = world.eks.token(eks_claims(NOW, iss="https://oidc.eks.eu-west-1.amazonaws.com/id/OTHER"))
    message = denied(v, req(token, "orders", "payments", "localhost"), "token_issuer")
    assert "no issuer rule matches the token's iss 'https://oidc.eks.eu-west-1" in message
    assert f"eks ({EKS_ISS})" in message and "github (" in message
    # signed by EKS's key but claiming GitHub's iss: GitHub's rule checks it, with GitHub's keys
    forged = world.eks.token(github_claims(world.base, NOW), headers={"kid": "gh-1"})
    assert "issuer rule 'github': the token's signature does not verify" in denied(
        v, req(forged, "repo-74", "gh-octo-org", "ci.example.org"), "token_signature"
    )


def test_required_claims_missing_or_different_are_denied(world):
    v = world.validator()
    claims = github_claims(world.base, NOW)
    del claims["repository_owner"]
    message = denied(
        v, req(world.gh.token(claims), "repo-74", "gh-octo-org", "ci.example.org"), "token_claims"
    )
    assert message == "issuer rule 'github': required claim repository_owner is missing"
    token = world.gh.token(github_claims(world.base, NOW, ref="refs/heads/feature"))
    message = denied(v, req(token, "repo-74", "gh-octo-org", "ci.example.org"), "token_claims")
    assert "claim /ref is 'refs/heads/feature', the rule requires 'refs/heads/main'" in message
    token = world.google.token(google_claims(NOW, email_verified="true"))  # a string, not true
    denied(v, req(token, "113774264463038321964", "gcp", "localhost"), "token_claims")


def test_an_identity_other_than_the_mapped_one_is_denied(world):
    v = world.validator()
    token = world.eks.token(eks_claims(NOW))
    message = denied(v, req(token, "billing", "payments", "localhost"), "token_mapping")
    assert message == (
        "issuer rule 'eks': the token maps to 'spiffe://localhost/ns/payments/orders', the request asks "
        "for 'spiffe://localhost/ns/payments/billing'"
    )
    # the rule's trust domain, not the one the request names
    gh = world.gh.token(github_claims(world.base, NOW))
    denied(v, req(gh, "repo-74", "gh-octo-org", "public"), "token_mapping")
    # a claim that makes no valid name, or is missing
    bad = eks_claims(NOW)
    bad["kubernetes.io"]["serviceaccount"]["name"] = "orders.v2"
    assert "the mapped app id must not contain '.'" in denied(
        v, req(world.eks.token(bad), "orders", "payments", "localhost"), "token_mapping"
    )
    del bad["kubernetes.io"]["namespace"]
    assert "claim /kubernetes.io/namespace is missing" in denied(
        v, req(world.eks.token(bad), "orders", "payments", "localhost"), "token_mapping"
    )


def test_alg_confusion_unknown_kid_and_expiry_are_denied(world):
    v = world.validator()
    claims = eks_claims(NOW)
    hs = pyjwt.encode(claims, b"k" * 32, algorithm="HS256", headers={"kid": "eks-1"})
    denied(v, req(hs, "orders", "payments", "localhost"), "token_algorithm")
    es = SigningKey("eks-1", "ES256").token(claims)  # ES256 named for the RSA key's kid
    assert "no key in the JWKS of" in denied(
        v, req(es, "orders", "payments", "localhost"), "token_key_unknown"
    )
    unknown = SigningKey("eks-9", "RS256").token(claims)
    denied(v, req(unknown, "orders", "payments", "localhost"), "token_key_unknown")
    expired = world.eks.token(eks_claims(NOW - 7200))
    assert "issuer rule 'eks': the token has expired" in denied(
        v, req(expired, "orders", "payments", "localhost"), "token_expired"
    )
    other_aud = world.eks.token(eks_claims(NOW, aud=["sts.amazonaws.com"]))
    denied(v, req(other_aud, "orders", "payments", "localhost"), "token_audience")


def test_an_issuers_jwks_down_is_unavailable(world):
    v = world.validator()
    world.server.status = 503
    with pytest.raises(Unavailable, match="answered 503"):
        v.validate(req(world.eks.token(eks_claims(NOW)), "orders", "payments", "localhost"))
    with pytest.raises(Unavailable, match="openid-configuration answered 503"):
        v.validate(
            req(world.gh.token(github_claims(world.base, NOW)), "repo-74", "gh-octo-org", "ci.example.org")
        )
    assert not v.ready()[0]


def test_a_discovery_document_for_another_issuer_is_unavailable(world):
    world.server.documents["/gh/.well-known/openid-configuration"]["issuer"] = "https://evil.example.com"
    v = world.validator()
    with pytest.raises(Unavailable, match="its issuer is not"):
        v.validate(
            req(world.gh.token(github_claims(world.base, NOW)), "repo-74", "gh-octo-org", "ci.example.org")
        )


@pytest.mark.parametrize(
    "extra, words",
    [
        ('\n              trustDomain: "Not A Domain"', "issuers[0].trustDomain"),
        ("\n              flavour: x", "unknown key(s) flavour"),
    ],
)
def test_bad_rule_keys_are_configuration_errors(world, extra, words):
    with pytest.raises(
        ConfigError,
        match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        world.validator(world.yaml(eks_extra=extra))


@pytest.mark.parametrize(
    "rule, words",
    [
        ("namespace: gcp\n    appId: my.app", "appId 'my.app': app id must not contain '.'"),
        (
            "namespace: GH_{/repository_owner}\n    appId: x",
            "the literal text 'GH_' cannot be part of a namespace",
        ),
        ("namespace: gcp\n    appId: '{sub}'", "a placeholder is a JSON Pointer"),
        ("namespace: gcp", "namespace and appId are given together"),
        ("claims: {'/a~2': x}", "'~' must be followed by 0 or 1"),
    ],
)
def test_a_mapping_that_can_never_be_valid_is_a_configuration_error_at_start(world, rule, words):
    text = (
        f"""
spec:
  mtls:
    tokenValidators:
    - name: jwks
      options:
        issuers:
        - issuer: {GOOGLE_ISS}
          source: '{json.dumps(jwks(world.google))}'
    """.rstrip()
        + "\n          "
        + rule.replace("\n    ", "\n          ")
        + "\n"
    )
    with pytest.raises(ConfigError) as e:
        world.validator(text)
    assert words in str(e.value) and "issuers[0]" in str(e.value)


def test_source_and_issuers_together_or_a_plain_http_issuer_are_refused(world):
    base = "spec: {mtls: {tokenValidators: [{name: jwks, options: %s}]}}"
    with pytest.raises(ConfigError, match="'source' and 'issuers' exclude each other"):
        world.validator(base % "{source: x, issuers: [{issuer: 'https://a'}]}")
    with pytest.raises(
        ConfigError, match=r"issuers\[0\].issuer: required, the tokens' iss \(an https:// URL\)"
    ):
        world.validator(base % "{issuers: [{issuer: 'http://a'}]}")
    with pytest.raises(ConfigError, match="rule names must differ"):
        world.validator(base % "{issuers: [{name: a, issuer: 'https://a'}, {name: a, issuer: 'https://b'}]}")


def test_no_token_is_logged(world, caplog):
    v = world.validator()
    token = world.eks.token(eks_claims(NOW))
    with caplog.at_level(logging.DEBUG):
        v.validate(req(token, "orders", "payments", "localhost"))
        with pytest.raises(PermissionDenied):
            v.validate(req(token, "billing", "payments", "localhost"))
    assert token.split(".")[2] not in caplog.text and token.split(".")[1] not in caplog.text


def test_concurrent_callers_share_one_discovery_fetch(world):
    """OIDC discovery runs inside the cache's one fetch (design §6.3): callers arriving while it
    is slow wait for it; the server sees the discovery document and the JWK Set asked once."""
    import threading

    v = world.validator()
    world.server.delay = 0.3
    token = world.gh.token(github_claims(world.base, NOW))
    results: list[object] = []

    def call() -> None:
        try:
            results.append(v.validate(req(token, "repo-74", "gh-octo-org", "ci.example.org")).rule)
        except (PermissionDenied, Unavailable) as e:
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["github"] * 8
    assert world.server.fetches == 2  # openid-configuration, then jwks_uri
