"""``sentryca request --token-file`` (design §6.3): the token a workload's platform writes to a file
(a projected service-account token, a CI job's OIDC token) is read when the call is made and proves
the identity to a CA with the JWKS validator; a renewed file is used by the next call; bad files are
refused before any call, with exit 2."""

from __future__ import annotations

import pytest

from support.cli import run_sentryca as run
from support.cli import serve
from support.jwks_server import JwksServer, SigningKey, claims, jwks

AUDIENCE = "spiffe://localhost/ns/default/dapr-sentry"


@pytest.fixture
def jwks_ca(tmp_path):
    key = SigningKey("k1", "ES256")
    server = JwksServer(tmp_path / "tls", jwks(key)).start()
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n"
        f"      - name: jwks\n        options:\n          source: {server.url}\n"
        f"          caCertificate: {server.ca_pem}\n          minRefreshInterval: 1m\n"
        "          requestTimeout: 5s\n"
    )
    ca = serve(tmp_path, "--mode", "standalone", "--config", str(config))
    try:
        assert ca.wait_ready()["validators"] == ["jwks"]
        yield ca, key
    finally:
        ca.stop()
        server.stop()


def request(ca, tmp_path, app: str, *extra: str, env: dict | None = None):
    return run(
        "request",
        "--id",
        app,
        "--namespace",
        "prod",
        "--token-validator",
        "jwks",
        "--server",
        f"localhost:{ca.port}",
        "--trust-anchors",
        str(ca.creds / "ca.crt"),
        "--out",
        str(tmp_path / f"out-{app}"),
        *extra,
        env=env,
    )


def test_the_token_is_read_from_the_file_at_each_call(jwks_ca, tmp_path):
    ca, key = jwks_ca
    token_file = tmp_path / "token"
    token_file.write_text(key.token(claims("spiffe://public/ns/prod/orders", AUDIENCE)) + "\n")
    r = request(ca, tmp_path, "orders", "--token-file", str(token_file))
    assert r.returncode == 0, r.stderr
    assert "spiffe://public/ns/prod/orders" in r.stdout
    # the platform renews the file: the next call proves the new identity with it
    token_file.write_text(key.token(claims("spiffe://public/ns/prod/payments", AUDIENCE)))
    r = request(ca, tmp_path, "payments", env={"SENTRY_TOKEN_FILE": str(token_file)})
    assert r.returncode == 0, r.stderr
    assert "spiffe://public/ns/prod/payments" in r.stdout
    # the file's token is what the CA judged: asking for another id with it is refused
    before = (tmp_path / "out-orders" / "tls.crt").read_bytes()
    r = request(ca, tmp_path, "orders", "--token-file", str(token_file))
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
    assert (tmp_path / "out-orders" / "tls.crt").read_bytes() == before  # a refusal writes nothing


def test_bad_token_files_are_refused_before_any_call(jwks_ca, tmp_path):
    ca, key = jwks_ca
    empty, two, binary = tmp_path / "empty", tmp_path / "two", tmp_path / "binary"
    empty.write_text("\n")
    two.write_text("a b\n")
    binary.write_bytes(b"\xff\xfe")
    for path, why in (
        (tmp_path / "missing", "cannot read it"),
        (empty, "holds no token"),
        (two, "holds no token"),
        (binary, "not ASCII text"),
    ):
        r = request(ca, tmp_path, "orders", "--token-file", str(path))
        assert r.returncode == 2 and why in r.stderr, (path, r.stderr)
    good = tmp_path / "good"
    good.write_text(key.token(claims("spiffe://public/ns/prod/orders", AUDIENCE)))
    r = request(ca, tmp_path, "orders", "--token-file", str(good), "--token", "x")
    assert r.returncode == 2 and "exclude each other" in r.stderr
    assert not (tmp_path / "out-orders").exists()
