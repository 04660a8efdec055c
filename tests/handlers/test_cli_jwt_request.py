"""``sentryca request --jwt-audience`` (design §11.3): the real CA on loopback with JWT-SVIDs on,
the CLI run in-process; each token is checked by the client (PyJWT) against a JWK Set before
anything is written, and what was written is verified again here with joserfc. A JWK Set that is
not the CA's, a CA without JWT-SVIDs, or no JWK Set at all: refused, nothing written. The
client's checks one by one on tokens made here (expired, another subject, a per-audience token
with more audiences, an algorithm the key does not have, an unknown kid)."""

from __future__ import annotations

import json
import time

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

import sentryca_client as client
from handlers.cli import main
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2

from support.ca import ca_config
from support.jwks_server import JwksServer, SigningKey, jwks

AZURE = "api://AzureADTokenExchange"


@pytest.fixture
def jwt_ca(store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, jwt_enabled="true", jwt_signing_algorithm="ES256"))
    try:
        yield ca
    finally:
        ca.stop(grace=0)


def request(ca, store_dir, out, *more: str) -> int:
    return main(
        [
            "request",
            "--id",
            "orders",
            "--namespace",
            "prod",
            "--server",
            f"localhost:{ca.grpc_port}",
            "--trust-anchors",
            str(store_dir / "ca.crt"),
            "--out",
            str(out),
            *more,
        ]
    )


def test_tokens_are_verified_then_written_beside_the_certificate(jwt_ca, store_dir, tmp_path, capsys):
    out = tmp_path / "certs"
    jwks_file = store_dir / "jwks.json"
    code = request(
        jwt_ca,
        store_dir,
        out,
        "--jwt-audience",
        "sts.amazonaws.com",
        "--jwt-audience",
        AZURE,
        "--jwks",
        str(jwks_file),
    )
    assert code == 0, capsys.readouterr()
    names = {
        "jwt.token",
        "jwt-public.token",
        "jwt-sts.amazonaws.com.token",
        "jwt-api%3A%2F%2FAzureADTokenExchange.token",
    }
    assert names <= {p.name for p in out.iterdir()}
    assert "jwt-sts.amazonaws.com.token" in capsys.readouterr().out
    spiffe_id = "spiffe://public/ns/prod/orders"
    keys = KeySet.import_key_set(json.loads(jwks_file.read_bytes()))
    every = jose_jwt.decode((out / "jwt.token").read_text().strip(), keys, algorithms=["ES256"])
    assert every.claims["aud"] == ["public", "sts.amazonaws.com", AZURE] and every.claims["sub"] == spiffe_id
    for aud in ("public", "sts.amazonaws.com", AZURE):
        path = out / client_file(aud)
        assert path.stat().st_mode & 0o777 == 0o600
        token = jose_jwt.decode(path.read_text().strip(), keys, algorithms=["ES256"])
        assert token.claims["aud"] == [aud] and token.claims["sub"] == spiffe_id
        jose_jwt.JWTClaimsRegistry(exp={"essential": True}).validate(token.claims)


def client_file(aud: str) -> str:
    from handlers.cli.client_verbs import jwt_file_name

    return jwt_file_name(aud)


def test_the_store_public_part_and_an_https_url_serve_as_the_jwk_set(jwt_ca, store_dir, tmp_path, capsys):
    store = f"file://{store_dir}"
    assert (
        request(jwt_ca, store_dir, tmp_path / "a", "--jwt-audience", "x", "--trust-bundle-store", store) == 0
    )
    assert (tmp_path / "a" / "jwt-x.token").exists()
    server = JwksServer(tmp_path / "tls", json.loads((store_dir / "jwks.json").read_bytes())).start()
    try:
        args = ("--jwt-audience", "x", "--jwks", server.url, "--jwks-ca", str(server.ca_pem))
        assert request(jwt_ca, store_dir, tmp_path / "b", *args) == 0
        assert (tmp_path / "b" / "jwt-x.token").exists()
        # the URL's server is not trusted without --jwks-ca: refused before the CA is asked
        assert request(jwt_ca, store_dir, tmp_path / "c", "--jwt-audience", "x", "--jwks", server.url) == 1
        assert "cannot fetch" in capsys.readouterr().err and not (tmp_path / "c").exists()
    finally:
        server.stop()


def test_a_jwk_set_that_is_not_the_cas_is_refused_and_nothing_is_written(jwt_ca, store_dir, tmp_path, capsys):
    kid = json.loads((store_dir / "jwks.json").read_bytes())["keys"][0]["kid"]
    for name, document in {
        "same-kid": jwks(SigningKey(kid, "ES256")),  # another key under the CA's kid
        "other-kid": jwks(SigningKey("someone-else", "ES256")),
    }.items():
        wrong = tmp_path / f"{name}.json"
        wrong.write_text(json.dumps(document))
        out = tmp_path / name
        assert request(jwt_ca, store_dir, out, "--jwt-audience", "x", "--jwks", str(wrong)) == 1
        err = capsys.readouterr().err
        assert "jwt: " in err and "nothing was written" in err, err
        assert ("does not verify" if name == "same-kid" else "is not in the JWK Set") in err
        assert not out.exists()


def test_no_jwk_set_or_a_ca_without_jwt_svids_is_refused(running_ca, store_dir, tmp_path, capsys):
    out = tmp_path / "certs"
    assert request(running_ca, store_dir, out, "--jwt-audience", "x") == 2
    assert "--jwt-audience needs the JWK Set" in capsys.readouterr().err
    assert request(running_ca, store_dir, out, "--jwks", str(tmp_path / "x.json")) == 2
    assert "ask for them with --jwt-audience" in capsys.readouterr().err
    assert request(running_ca, store_dir, out, "--trust-bundle-store", f"file://{store_dir}") == 2
    assert "ask for them with --jwt-audience" in capsys.readouterr().err
    # a store without jwks.json (this CA runs without --jwt-enabled): refused before the call
    assert (
        request(
            running_ca, store_dir, out, "--jwt-audience", "x", "--trust-bundle-store", f"file://{store_dir}"
        )
        == 1
    )
    assert "holds no jwks.json" in capsys.readouterr().err
    other = tmp_path / "jwks.json"
    other.write_text(json.dumps(jwks(SigningKey("k", "ES256"))))
    assert request(running_ca, store_dir, out, "--jwt-audience", "x", "--jwks", str(other)) == 1
    assert "the CA returned no JWT-SVID (is it started with --jwt-enabled true?)" in capsys.readouterr().err
    assert not out.exists()


# --- the client's checks, on tokens made here ----------------------------------------------------

ID = "spiffe://example.org/ns/prod/orders"


def response_of(key: SigningKey, every: dict, per: dict[str, dict], headers: dict | None = None):
    r = sentry_pb2.SignCertificateResponse()
    r.jwt.value = key.token(every, headers)
    for aud, claims in per.items():
        r.per_audience_jwts[aud].value = key.token(claims, headers)
    return r


def claims_at(aud, *, exp_in=600, nbf_in=-900, **over):
    """Claims as of now: ``exp``/``nbf`` this many seconds from now."""
    now = int(time.time())
    return {"sub": ID, "aud": aud, "iat": now, "nbf": now + nbf_in, "exp": now + exp_in} | over


def fine(aud, **over):
    """The claims of a token made when the test runs (not when pytest collects it: a long run
    would see them expire): a callable giving them."""
    return lambda: claims_at(aud, **over)


@pytest.mark.parametrize(
    "every, per, headers, why",
    [
        (fine(["example.org", "x"]), {"example.org": fine(["example.org"]), "x": fine(["x"])}, None, None),
        (fine(["example.org", "x"], exp_in=-1), {}, None, "jwt: the token expired"),
        (fine(["example.org", "x"], sub=ID + "2"), {}, None, "jwt: the token's sub is not"),
        (fine(["example.org"]), {}, None, "jwt: the token is not for the audience 'x'"),
        (
            fine(["example.org", "x"]),
            {"example.org": fine(["example.org"]), "x": fine(["x", "y"])},
            None,
            "per_audience_jwts['x']: the token for 'x' has aud ['x', 'y']",
        ),
        (fine(["example.org", "x"]), {"example.org": fine(["example.org"])}, None, "no token for 'x'"),
        (fine(["example.org", "x"]), {}, {"kid": "unknown"}, "jwt: the key 'unknown' is not in the JWK Set"),
        (
            fine(["example.org", "x"], nbf_in=60),
            {},
            None,
            "jwt: the token is not valid before",
        ),
    ],
)
def test_each_check_of_the_client(every, per, headers, why):
    every, per = every(), {aud: claims() for aud, claims in per.items()}
    key = SigningKey("k1", "ES256")
    keys = client.parse_jwks(json.dumps(jwks(key)).encode(), "test")
    response = response_of(key, every, per, headers)
    if why is None:
        svids = client.verify_jwt_svids(response, keys, spiffe_id=ID, audiences=["x"])
        assert svids.per_audience["x"].audience == ("x",) and svids.jwt.key_id == "k1"
        return
    with pytest.raises(client.VerifyError) as e:
        client.verify_jwt_svids(response, keys, spiffe_id=ID, audiences=["x"])
    assert why in str(e.value)
    assert response.jwt.value not in str(e.value)  # never the token itself


def test_the_algorithm_is_the_keys_never_the_tokens():
    """A token whose header claims another algorithm than its key's is refused before any
    signature check: an HS256 token naming the RSA key's kid (the classic confusion, where a
    verifier trusting the header would take the public key as the HMAC secret), and alg none."""
    import jwt as pyjwt

    key = SigningKey("k1", "RS256")
    keys = client.parse_jwks(json.dumps(jwks(key)).encode(), "test")
    forged = pyjwt.api_jws.PyJWS().encode(
        json.dumps(claims_at(["example.org"])).encode(), b"x" * 32, algorithm="HS256", headers={"kid": "k1"}
    )
    with pytest.raises(client.VerifyError, match="the token says alg 'HS256'; key 'k1' is RS256"):
        client.verify_jwt_svid(forged, keys, spiffe_id=ID, audience="example.org", exact=False)
    none = pyjwt.encode(claims_at(["example.org"]), None, algorithm="none", headers={"kid": "k1"})
    with pytest.raises(client.VerifyError, match="alg 'none'"):
        client.verify_jwt_svid(none, keys, spiffe_id=ID, audience="example.org", exact=False)


def test_a_jwk_set_over_plain_http_or_unreadable_is_refused(tmp_path):
    with pytest.raises(client.JwksError, match="over https only"):
        client.load_jwks("http://127.0.0.1:1/jwks.json")
    with pytest.raises(client.JwksError, match="No such file"):
        client.load_jwks(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"keys": []}')
    with pytest.raises(client.JwksError, match="not a JWK Set with a usable key"):
        client.load_jwks(str(tmp_path / "bad.json"))
