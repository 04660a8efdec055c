"""The OIDC discovery documents and rules (design §9.9), on JWKS built from real keys."""

from __future__ import annotations

import json

import pytest

from ca_core import oidc
from ca_core.errors import ConfigError

from support.jwks_server import SigningKey, jwks


def test_endpoints_under_a_prefix_as_dapr_joins_them():
    assert oidc.endpoints(None) == oidc.Endpoints("/.well-known/openid-configuration", "/jwks.json")
    assert oidc.endpoints("/") == oidc.endpoints("") == oidc.endpoints(None)
    e = oidc.endpoints("/dapr/oidc/")
    assert (e.discovery, e.jwks, e.prefix) == (
        "/dapr/oidc/.well-known/openid-configuration",
        "/dapr/oidc/jwks.json",
        "/dapr/oidc",
    )


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://oidc.example.com", True),
        ("https://bucket.s3.us-east-1.amazonaws.com/sentryca", True),
        ("https://[::1]:8443/x", True),
        ("http://oidc.example.com", False),
        ("https://oidc.example.com/?a=b", False),
        ("https://oidc.example.com/#f", False),
        ("https://user:pw@oidc.example.com", False),
        ("https://", False),
        ("https://oidc.example.com/a/../b", False),
        ("https://oidc example.com", False),
        ("oidc.example.com", False),
    ],
)
def test_issuer_urls(url, ok):
    assert (oidc.url_problem(url) is None) is ok


def test_http_is_allowed_only_where_asked():
    assert oidc.url_problem("http://keys.internal/jwks.json", https_only=False) is None


def test_hosts_as_dapr_matches_them():
    assert oidc.host_allowed((), "anything")
    assert oidc.host_allowed(("*",), "anything")
    allowed = ("oidc.example.com", "localhost:9443", "[::1]")
    assert oidc.host_allowed(allowed, "oidc.example.com:443")
    assert oidc.host_allowed(allowed, "OIDC.EXAMPLE.COM")
    assert oidc.host_allowed(allowed, "localhost:9443")
    assert oidc.host_allowed(allowed, "[::1]:9080")
    assert not oidc.host_allowed(allowed, "localhost")
    assert not oidc.host_allowed(allowed, "oidc.example.com.evil")
    assert not oidc.host_allowed(allowed, "::1")
    assert (
        oidc.concrete_hosts(allowed) and not oidc.concrete_hosts(()) and not oidc.concrete_hosts(("a", "*"))
    )


def test_algorithms_follow_the_keys():
    keys = [
        SigningKey("r", "RS256"),
        SigningKey("e", "ES256"),
        SigningKey("o", "EdDSA"),
        SigningKey("p", "ES384"),
    ]
    doc = jwks(*keys)
    assert oidc.signing_algorithms(json.dumps(doc).encode()) == ("RS256", "ES256", "EdDSA", "ES384")
    doc["keys"][0]["alg"] = "PS256"
    assert oidc.signing_algorithms(json.dumps(doc).encode())[0] == "PS256"
    assert oidc.signing_algorithms(b'{"keys":[]}') == ("RS256",)


def test_the_discovery_document_is_stable_and_names_the_issuer_s_jwks():
    document = json.dumps(jwks(SigningKey("e", "ES256"))).encode()
    docs = oidc.issuer_documents("https://b.s3.us-east-1.amazonaws.com/ca/", document)
    assert set(docs) == {"jwks.json", ".well-known/openid-configuration"}
    assert docs["jwks.json"] == document
    meta = json.loads(docs[".well-known/openid-configuration"])
    assert meta["issuer"] == "https://b.s3.us-east-1.amazonaws.com/ca"
    assert meta["jwks_uri"] == "https://b.s3.us-east-1.amazonaws.com/ca/jwks.json"
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
    assert meta["claims_supported"] == ["sub", "iss", "aud", "exp", "iat", "nbf", "use"]
    assert docs == oidc.issuer_documents("https://b.s3.us-east-1.amazonaws.com/ca", document)


@pytest.mark.parametrize(
    "bad", [b"not json", b"[]", b'{"keys": {}}', b'{"keys": [1]}', b'{"keys":[{"kty":"oct","k":"AA"}]}']
)
def test_what_is_not_a_public_jwk_set_is_refused(bad):
    with pytest.raises(ConfigError):
        oidc.public_keys(bad)


def test_private_key_material_is_refused():
    from jwt.algorithms import ECAlgorithm

    key = SigningKey("e", "ES256")
    private = json.dumps({"keys": [ECAlgorithm.to_jwk(key.key, as_dict=True)]}).encode()
    with pytest.raises(ConfigError, match="private key material"):
        oidc.discovery_document("https://x", "https://x/jwks.json", private)
