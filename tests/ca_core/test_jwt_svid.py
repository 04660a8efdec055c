"""JWT-SVIDs (design §11): keys, JWK Set and kid as Dapr's Sentry makes them, tokens verified by
independent code (joserfc against the JWK Set, PyJWT), the signer's order, the bundle items."""

import base64
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import errors as jose_errors
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from ca_core import jwt_svid
from ca_core.bundle import JWKS, JWT_KEY, parse_bundle
from ca_core.config import load_config
from ca_core.errors import BundleError, ConfigError, FailedPrecondition, InvalidRequest
from ca_core.jwt_svid import JwtAlgorithm, JwtIssuer
from ca_core.keys import private_key_pem
from ca_core.policy import jwt_issuer
from ca_core.service import Signer, SigningPolicy
from ca_core.validators import InsecureValidator, SignRequest, TokenValidatorKind

from support.pki import NOW, bundle_with_issuer_window, make_bundle, make_csr

ALGORITHMS = list(JwtAlgorithm)
# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" name (for "Ed25519"); Dapr's
# Sentry and the federation consumers still use "EdDSA".
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
SUBJECT = "spiffe://example.org/ns/prod/orders"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict, dict]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def issuer_for(alg: JwtAlgorithm, **kw) -> tuple[JwtIssuer, bytes]:
    key, jwks = jwt_svid.new_jwt_items(alg)
    return JwtIssuer.create(key, alg, jwt_svid.signing_key_id(jwks, key), **kw), jwks


def test_thumbprint_is_rfc_7638s_example():
    # RFC 7638 §3.1: this RSA key's SHA-256 thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
        "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
        "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_x"
        "BniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    key = rsa.RSAPublicNumbers(65537, int.from_bytes(b64url_decode(n), "big")).public_key()
    assert jwt_svid.thumbprint(key) == b64url_decode("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    # Dapr's Sentry encodes it with standard base64, padded
    assert jwt_svid.default_key_id(key) == base64.b64encode(jwt_svid.thumbprint(key)).decode()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_generated_key_and_jwks_as_dapr_writes_them(alg):
    key, jwks = jwt_svid.new_jwt_items(alg)
    assert alg.key_problem(key) is None
    if alg is JwtAlgorithm.RS256:
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    elif alg is JwtAlgorithm.ES256:
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
    doc = json.loads(jwks)
    assert list(doc) == ["keys"] and len(doc["keys"]) == 1
    entry = doc["keys"][0]
    assert entry["use"] == "sig" and entry["alg"] == alg.value
    assert "d" not in entry and "p" not in entry  # never a private member
    # kid: joserfc's own RFC 7638 thumbprint, re-encoded as standard padded base64
    imported = KeySet.import_key_set(doc).keys[0]
    assert entry["kid"] == base64.b64encode(b64url_decode(imported.thumbprint())).decode()
    assert entry["kid"].endswith("=")
    assert jwt_svid.signing_key_id(jwks, key) == entry["kid"]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_tokens_verify_with_joserfc_and_pyjwt_field_by_field(alg):
    issuer, jwks = issuer_for(alg, ttl=timedelta(hours=1), clock_skew=timedelta(minutes=15))
    now = datetime.now(UTC).replace(microsecond=0)
    token = issuer.sign(SUBJECT, ["example.org", "aws"], now)
    header, claims = parts(token)
    assert header == {"alg": alg.value, "kid": issuer.key_id, "typ": "JWT"}
    assert set(claims) == {"jti", "sub", "aud", "iat", "nbf", "exp", "use"}  # no iss unless configured
    assert claims["sub"] == SUBJECT and claims["aud"] == ["example.org", "aws"] and claims["use"] == "sig"
    assert claims["iat"] == int(now.timestamp())
    assert claims["nbf"] == int((now - timedelta(minutes=15)).timestamp())
    assert claims["exp"] == int((now + timedelta(hours=1)).timestamp())
    assert len(claims["jti"]) == 32 and int(claims["jti"], 16) >= 0

    keys = KeySet.import_key_set(json.loads(jwks))
    decoded = jose_jwt.decode(token, keys, algorithms=[alg.value])
    jose_jwt.JWTClaimsRegistry(aud={"essential": True, "value": "aws"}).validate(decoded.claims)
    assert decoded.header["kid"] == issuer.key_id

    jwk = pyjwt.PyJWKSet.from_json(jwks.decode())[issuer.key_id]
    got = pyjwt.decode(token, jwk.key, algorithms=[alg.value], audience="aws")
    assert got == claims


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_expired_wrong_audience_and_wrong_key_tokens_are_refused(alg):
    issuer, jwks = issuer_for(alg, ttl=timedelta(minutes=5))
    _, other_jwks = issuer_for(alg)
    now = datetime.now(UTC)
    keys = KeySet.import_key_set(json.loads(jwks))
    jwk = pyjwt.PyJWKSet.from_json(jwks.decode())[issuer.key_id]

    expired = issuer.sign(SUBJECT, ["aws"], now - timedelta(hours=1))
    with pytest.raises(jose_errors.ExpiredTokenError):
        jose_jwt.JWTClaimsRegistry().validate(jose_jwt.decode(expired, keys, algorithms=[alg.value]).claims)
    with pytest.raises(pyjwt.ExpiredSignatureError):
        pyjwt.decode(expired, jwk.key, algorithms=[alg.value], audience="aws")

    token = issuer.sign(SUBJECT, ["aws"], now)
    with pytest.raises(jose_errors.InvalidClaimError):
        jose_jwt.JWTClaimsRegistry(aud={"essential": True, "value": "azure"}).validate(
            jose_jwt.decode(token, keys, algorithms=[alg.value]).claims
        )
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, jwk.key, algorithms=[alg.value], audience="azure")

    # the same kid under another key (a JWKS that is not this CA's): the signature fails
    other = json.loads(other_jwks)
    other["keys"][0]["kid"] = issuer.key_id
    with pytest.raises(jose_errors.BadSignatureError):
        jose_jwt.decode(token, KeySet.import_key_set(other), algorithms=[alg.value])
    wrong = pyjwt.PyJWKSet.from_dict(other)[issuer.key_id]
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(token, wrong.key, algorithms=[alg.value], audience="aws")


def test_issue_fills_jwt_and_per_audience_as_dapr_1_18():
    issuer, _ = issuer_for(JwtAlgorithm.ES256)
    none = issuer.issue(SUBJECT, "example.org", [], NOW)
    assert parts(none.jwt)[1]["aud"] == ["example.org"]
    assert list(none.per_audience) == ["example.org"]
    assert parts(none.per_audience["example.org"])[1]["aud"] == ["example.org"]
    # one audience: one token in both fields (the claims would differ only in jti)
    assert none.per_audience["example.org"] == none.jwt and none.count == 1
    assert none.jtis == (parts(none.jwt)[1]["jti"],)

    some = issuer.issue(SUBJECT, "example.org", ["aws", "azure", "aws"], NOW)
    assert parts(some.jwt)[1]["aud"] == ["example.org", "aws", "azure", "aws"]  # as sent, trust domain first
    assert list(some.per_audience) == ["example.org", "aws", "azure"]
    for aud, token in some.per_audience.items():
        assert parts(token)[1]["aud"] == [aud]
    jtis = {parts(t)[1]["jti"] for t in (some.jwt, *some.per_audience.values())}
    assert len(jtis) == 4 and some.count == 4  # every token its own jti


def test_exp_never_passes_the_certificate_and_iss_when_configured():
    issuer, _ = issuer_for(JwtAlgorithm.EDDSA, ttl=timedelta(hours=24), issuer="https://oidc.example.org")
    leaf_not_after = NOW + timedelta(hours=2)
    claims = parts(issuer.sign(SUBJECT, ["a"], NOW, leaf_not_after))[1]
    assert claims["exp"] == int(leaf_not_after.timestamp()) and claims["iss"] == "https://oidc.example.org"
    assert parts(issuer.sign(SUBJECT, ["a"], NOW, NOW + timedelta(days=3)))[1]["exp"] == int(
        (NOW + timedelta(hours=24)).timestamp()
    )


def test_a_key_that_does_not_fit_the_algorithm_is_refused_and_cannot_sign():
    key = JwtAlgorithm.RS256.generate()
    with pytest.raises(BundleError, match="ES256 needs an ECDSA P-256 key, not RSA 2048"):
        JwtIssuer.create(key, JwtAlgorithm.ES256, "kid")
    with pytest.raises(BundleError, match="at least 2048"):
        JwtIssuer.create(rsa.generate_private_key(65537, 1024), JwtAlgorithm.RS256, "kid")
    unchecked = JwtIssuer(key, JwtAlgorithm.ES256, "kid")  # as a fault would leave it
    with pytest.raises(FailedPrecondition) as e:
        unchecked.issue(SUBJECT, "example.org", ["a"], NOW)
    assert e.value.reason == "jwt_sign_failed"


def test_algorithm_names_parse_as_jose_spells_them():
    assert (
        JwtAlgorithm.parse("eddsa") is JwtAlgorithm.EDDSA
        and JwtAlgorithm.parse("RS256") is JwtAlgorithm.RS256
    )
    with pytest.raises(ValueError, match="use one of RS256, ES256, EdDSA"):
        JwtAlgorithm.parse("HS256")


# -- the bundle items ---------------------------------------------------------------------------


def test_bundle_items_round_trip_and_go_together():
    bundle = make_bundle(jwt=JwtAlgorithm.RS256)
    items = bundle.to_items()
    parsed = parse_bundle(items)
    assert private_key_pem(parsed.jwt_key) == items[JWT_KEY] and parsed.jwks == items[JWKS]
    assert parsed.public.jwks == items[JWKS]
    for missing, present in ((JWT_KEY, JWKS), (JWKS, JWT_KEY)):
        with pytest.raises(BundleError, match=f"{missing}: is missing, but {present} is present"):
            parse_bundle({k: v for k, v in items.items() if k != missing})


def test_a_jwks_that_does_not_publish_the_key_is_refused():
    items = make_bundle(jwt=JwtAlgorithm.RS256).to_items()
    other = make_bundle(jwt=JwtAlgorithm.RS256).to_items()
    with pytest.raises(
        BundleError, match=re.escape("jwks.json: does not hold the public key of the JWT signing key")
    ):
        parse_bundle(items | {JWKS: other[JWKS]})
    with pytest.raises(
        BundleError, match=re.escape('jwks.json: is not a JWK Set: it needs a non-empty "keys"')
    ):
        parse_bundle(items | {JWKS: b'{"keys": []}'})
    with pytest.raises(BundleError, match=re.escape("jwks.json: is not a JSON document")):
        parse_bundle(items | {JWKS: b"not json"})
    with pytest.raises(BundleError, match=re.escape("jwt.key: is not an RSA")):
        parse_bundle(items | {JWT_KEY: private_key_pem(ec.generate_private_key(ec.SECP384R1()))})


def test_a_jwks_written_as_dapr_writes_it_loads_and_its_kid_signs():
    """Dapr's Sentry: an RSA-2048 key (PKCS#8), a JWK Set of one key with kid (standard base64 of
    the SHA-256 thumbprint), alg RS256 and use sig; jwx writes members sorted, e before kid."""
    key = rsa.generate_private_key(65537, 2048)
    pub = key.public_key().public_numbers()

    def b64url(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    canonical = json.dumps({"e": b64url(pub.e), "kty": "RSA", "n": b64url(pub.n)}, separators=(",", ":"))
    import hashlib

    kid = base64.b64encode(hashlib.sha256(canonical.encode()).digest()).decode()
    jwks = json.dumps(
        {
            "keys": [
                {
                    "alg": "RS256",
                    "e": b64url(pub.e),
                    "kid": kid,
                    "kty": "RSA",
                    "n": b64url(pub.n),
                    "use": "sig",
                }
            ]
        }
    ).encode()
    items = make_bundle().to_items() | {JWT_KEY: private_key_pem(key), JWKS: jwks}
    bundle = parse_bundle(items)
    cfg = load_config({"jwt_enabled": "true"}, {})
    issuer = jwt_issuer(cfg, bundle)
    assert issuer is not None and issuer.key_id == kid and issuer.algorithm is JwtAlgorithm.RS256
    with pytest.raises(BundleError, match="has no entry with kid 'other'"):
        jwt_issuer(load_config({"jwt_enabled": "true", "jwt_key_id": "other"}, {}), bundle)
    with pytest.raises(BundleError, match="ES256 needs an ECDSA P-256 key"):
        jwt_issuer(load_config({"jwt_enabled": "true", "jwt_signing_algorithm": "ES256"}, {}), bundle)
    with pytest.raises(BundleError, match="holds no JWT key"):
        jwt_issuer(cfg, make_bundle())
    assert jwt_issuer(load_config({}, {}), bundle) is None


def test_the_options_and_their_checks():
    cfg = load_config(
        {}, {"SENTRY_JWT_ENABLED": "yes", "SENTRY_JWT_TTL": "1h", "SENTRY_JWT_SIGNING_ALGORITHM": "EdDSA"}
    )
    assert (cfg.jwt_enabled, cfg.jwt_ttl, cfg.jwt_signing_algorithm) == (
        True,
        timedelta(hours=1),
        JwtAlgorithm.EDDSA,
    )
    defaults = load_config({}, {})
    assert (defaults.jwt_enabled, defaults.jwt_ttl, defaults.jwt_signing_algorithm) == (
        False,
        timedelta(hours=24),
        JwtAlgorithm.RS256,
    )
    assert defaults.jwt_issuer is None and defaults.jwt_key_id is None
    for flags, words in (
        ({"jwt_issuer": "https://x"}, "--jwt-issuer is set but --jwt-enabled is false"),
        ({"jwt_enabled": "true", "jwt_ttl": "0s"}, "--jwt-ttl must be positive"),
        ({"jwt_enabled": "true", "jwt_ttl": "721h"}, "at most 720h"),
        ({"jwt_signing_algorithm": "PS256"}, "--jwt-signing-algorithm: unknown JWT signing algorithm"),
        ({"jwt_enabled": "true", "jwt_key_id": "a\nb"}, "--jwt-key-id must be printable"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_config(flags, {})


# -- the signer: JWTs only after every check of the X.509 path ------------------------------------


def jwt_signer(bundle=None, **issuer_kw):
    bundle = bundle or make_bundle(jwt=JwtAlgorithm.ES256)
    issuer = JwtIssuer.create(
        bundle.jwt_key, JwtAlgorithm.ES256, jwt_svid.signing_key_id(bundle.jwks, bundle.jwt_key), **issuer_kw
    )
    validators = {TokenValidatorKind.INSECURE: InsecureValidator()}
    return Signer(bundle, SigningPolicy(), validators, TokenValidatorKind.INSECURE, issuer), bundle


def req(**kw):
    return SignRequest(**({"app_id": "orders", "namespace": "prod", "csr_pem": make_csr()} | kw))


def test_the_signer_adds_jwts_for_the_issued_identity_capped_at_the_leaf():
    signer, _ = jwt_signer(ttl=timedelta(days=2))
    result = signer.sign(req(jwt_audiences=("aws",)), NOW)
    assert result.jwts is not None
    claims = parts(result.jwts.jwt)[1]
    assert claims["sub"] == "spiffe://public/ns/prod/orders" and claims["aud"] == ["public", "aws"]
    assert claims["exp"] == int(result.not_after.timestamp())  # the leaf's NotAfter (24h) < 2 days
    assert set(result.jwts.per_audience) == {"public", "aws"}
    td = signer.sign(req(trust_domain="example.org"), NOW).jwts
    assert list(td.per_audience) == ["example.org"]


def test_no_jwts_when_the_x509_path_fails_and_bad_audiences_are_invalid_argument():
    expired = bundle_with_issuer_window(
        NOW - timedelta(days=2), NOW - timedelta(days=1), NOW - timedelta(days=3)
    )
    signer, _ = jwt_signer(expired.with_jwt(*jwt_svid.new_jwt_items(JwtAlgorithm.ES256)))
    with pytest.raises(FailedPrecondition):
        signer.sign(req(jwt_audiences=("aws",)), NOW)
    signer, _ = jwt_signer()
    for audiences, words in (
        (("",), "entry 1 is empty"),
        (tuple(f"a{i}" for i in range(33)), "holds 33 audiences; at most 32"),
        (("x" * 1025,), "longer than 1024 bytes"),
    ):
        with pytest.raises(InvalidRequest, match=words) as e:
            signer.sign(req(jwt_audiences=audiences), NOW)
        assert e.value.reason == "jwt_audiences"
    with pytest.raises(InvalidRequest) as e:  # the CSR is judged first
        signer.sign(req(csr_pem=b"junk", jwt_audiences=("",)), NOW)
    assert e.value.reason == "csr_not_pem"


def test_without_jwt_issuance_the_audiences_are_ignored():
    validators = {TokenValidatorKind.INSECURE: InsecureValidator()}
    plain = Signer(make_bundle(), SigningPolicy(), validators, TokenValidatorKind.INSECURE)
    assert plain.sign(req(jwt_audiences=("",) * 40), NOW).jwts is None


# -- never silently replaced: trust continuity and X.509 rotation keep the JWT key ---------------


def test_continuity_refuses_a_replacement_that_drops_a_published_jwt_key():
    from ca_core.continuity import judge_replacement, refusal_message

    current = make_bundle(jwt=JwtAlgorithm.ES256)
    kid = jwt_svid.key_ids(current.jwks)[0]
    same_root_no_jwt = replace(current, jwt_key=None, jwks=None)
    other_key = current.with_jwt(*jwt_svid.new_jwt_items(JwtAlgorithm.ES256))
    cur_items = current.to_items()
    for new in (same_root_no_jwt, other_key):
        verdict = judge_replacement(current, cur_items, new, new.to_items(), NOW)
        assert not verdict.allowed and verdict.dropped_jwt_keys == (kid,) and verdict.dropped_root is None
        assert f"does not publish the JWT key(s) {kid}" in refusal_message(verdict, "file://x")
        assert judge_replacement(current, cur_items, new, new.to_items(), NOW, force=True).allowed
    # the same key under another kid is the same key; adding a key where there was none is fine
    relabelled = json.loads(current.jwks)
    relabelled["keys"][0]["kid"] = "renamed"
    new_items = cur_items | {JWKS: json.dumps(relabelled).encode()}
    assert judge_replacement(current, cur_items, current, new_items, NOW).allowed
    plain = same_root_no_jwt
    assert judge_replacement(plain, plain.to_items(), current, cur_items, NOW).allowed


def test_x509_rotation_keeps_the_jwt_items():
    from ca_core.rotation import actions
    from ca_core.rotation.state import EMPTY, RotationPolicy

    bundle = make_bundle(jwt=JwtAlgorithm.RS256)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy())
    emergency = actions.emergency_root(bundle, EMPTY, NOW, RotationPolicy())
    for rotation in (prepared, emergency):
        items = rotation.items()
        assert items[JWKS] == bundle.jwks and items[JWT_KEY] == bundle.to_items()[JWT_KEY]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_spiffe_packages_jwt_svid_parsing_against_the_jwks(alg):
    """The spiffe package validates JWT-SVIDs as the SPIFFE JWT-SVID specification says (RS*, ES*,
    PS* only): RS256 and ES256 tokens pass; EdDSA, which Dapr's Sentry offers too, is outside that
    specification and refused by it (design §11)."""
    from spiffe import JwtBundle, JwtSvid, TrustDomain
    from spiffe.errors import PySpiffeError

    issuer, jwks = issuer_for(alg)
    token = issuer.sign(SUBJECT, ["aws", "azure"], datetime.now(UTC))
    bundle = JwtBundle.parse(TrustDomain("example.org"), jwks)
    if alg is JwtAlgorithm.EDDSA:
        with pytest.raises(PySpiffeError, match="Algorithm not supported: EdDSA"):
            JwtSvid.parse_and_validate(token, bundle, {"aws"})
        return
    svid = JwtSvid.parse_and_validate(token, bundle, {"aws"})
    assert str(svid.spiffe_id) == SUBJECT and svid.audience == {"aws", "azure"}
    with pytest.raises(PySpiffeError, match="Audience doesn't match"):
        JwtSvid.parse_and_validate(token, bundle, {"gcp"})
    expired = issuer.sign(SUBJECT, ["aws"], datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(PySpiffeError, match="Signature has expired"):
        JwtSvid.parse_and_validate(expired, bundle, {"aws"})
    _, other = issuer_for(alg)
    relabelled = json.loads(other)
    relabelled["keys"][0]["kid"] = issuer.key_id
    wrong = JwtBundle.parse(TrustDomain("example.org"), json.dumps(relabelled).encode())
    with pytest.raises(PySpiffeError, match="Signature verification failed"):
        JwtSvid.parse_and_validate(token, wrong, {"aws"})
