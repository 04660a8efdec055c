"""The bundle verbs with the JWT items (design §5.1, §5.4, §5.15, §11): `bundle export` and
`bundle import --from` carry them, `bundle show` hands out jwks.json, `inspect` shows the key id,
an import without JWT items keeps the current key, and one that drops it is refused."""

from __future__ import annotations

import json

import pytest

from adapters.stores import FileBundleStore
from ca_core.bundle import parse_bundle
from ca_core.jwt_svid import JwtAlgorithm, key_ids, new_jwt_items

from support.cli import run_sentryca as run
from support.pki import make_bundle, write_bundle


def test_export_then_import_carries_the_jwt_items_and_inspect_and_show_name_the_key(tmp_path):
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    store, backup, other = tmp_path / "store", tmp_path / "backup", tmp_path / "other"
    write_bundle(store, bundle)
    kid = key_ids(bundle.jwks)[0]

    r = run("inspect", "--trust-bundle-store", f"file://{store}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"jwks   key kid {kid}  ES256 EC" in r.stdout
    assert f"jwt: signing key kid {kid} (ES256), published in jwks.json" in r.stdout

    r = run("bundle", "export", "--trust-bundle-store", f"file://{store}", "--out", str(backup))
    assert r.returncode == 0, r.stderr
    assert "jwt.key" in r.stdout and (backup / "jwt.key").read_bytes() == bundle.to_items()["jwt.key"]

    r = run("bundle", "import", "--trust-bundle-store", f"file://{other}", "--from", str(backup))
    assert r.returncode == 0, r.stderr
    imported = parse_bundle(FileBundleStore(other).load().items)
    assert imported.jwks == bundle.jwks
    assert imported.jwt_key.private_numbers() == bundle.jwt_key.private_numbers()

    out = tmp_path / "public"
    r = run("bundle", "show", "--trust-bundle-store", f"file://{other}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "jwks.json").read_bytes() == bundle.jwks and not (out / "jwt.key").exists()
    r = run("bundle", "show", "--trust-bundle-store", f"file://{other}")
    assert "# jwks.json" in r.stdout and json.loads(r.stdout.split("# jwks.json")[1].split("\n", 1)[1])


def test_an_import_without_jwt_items_keeps_the_key_and_one_that_drops_it_is_refused(tmp_path):
    bundle = make_bundle(jwt=JwtAlgorithm.RS256)
    store = tmp_path / "store"
    write_bundle(store, bundle)
    # the same root with the X.509 items only: the current JWT key stays
    given = tmp_path / "given"
    given.mkdir()
    items = bundle.to_items()
    for name in ("ca.crt", "issuer.crt", "issuer.key"):
        (given / name).write_bytes(items[name])
    args = ("--root", str(given / "ca.crt"), "--issuer-cert", str(given / "issuer.crt"))
    args += ("--issuer-key", str(given / "issuer.key"))
    r = run("bundle", "import", "--trust-bundle-store", f"file://{store}", *args)
    assert r.returncode == 0, r.stderr
    assert "the current JWT key (jwt.key, jwks.json) is kept" in r.stderr
    assert parse_bundle(FileBundleStore(store).load().items).jwks == bundle.jwks

    # an export of the same root but another JWT key: tokens of the current key would stop verifying
    other = bundle.with_jwt(*new_jwt_items(JwtAlgorithm.RS256))
    elsewhere = tmp_path / "elsewhere"
    write_bundle(elsewhere, other)
    before = FileBundleStore(store).load()
    r = run("bundle", "import", "--trust-bundle-store", f"file://{store}", "--from", str(elsewhere))
    assert r.returncode == 1
    assert f"does not publish the JWT key(s) {key_ids(bundle.jwks)[0]}" in r.stderr
    assert FileBundleStore(store).load() == before
    r = run(
        "bundle", "import", "--trust-bundle-store", f"file://{store}", "--from", str(elsewhere), "--force"
    )
    assert r.returncode == 0, r.stderr
    assert parse_bundle(FileBundleStore(store).load().items).jwks == other.jwks


@pytest.fixture(params=["file", "s3", "secretsmanager", "kubernetes"])
def kind_env(request):
    """(store kind, environment for the CLI), as in test_cli_bundle."""
    if request.param == "file":
        return request.param, {}
    if request.param == "kubernetes":
        return request.param, {"SENTRY_KUBECONFIG": request.getfixturevalue("kube_api").kubeconfig}
    return request.param, request.getfixturevalue("aws_env")


def test_serve_with_jwt_enabled_on_each_store_kind_adds_the_key_and_issues_verifiable_jwts(
    kind_env, tmp_path, request
):
    """`sentryca serve` (SENTRY_JWT_ENABLED) over a store that holds a bundle without JWT items: the
    start adds them; `bundle show` hands out jwks.json; the tokens verify against it (joserfc)."""
    import uuid

    import grpc
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet

    import sentryca_client as client
    from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

    from support.aws import TEST_BUCKET
    from support.cli import serve
    from support.kube import KUBE_NAMESPACE
    from support.pki import make_csr

    kind, env = kind_env
    tag = uuid.uuid4().hex[:10]
    url = {
        "file": f"file://{tmp_path / tag}",
        "s3": f"s3://{TEST_BUCKET}/cli/{tag}.json",
        "secretsmanager": f"secretsmanager://sentryca/jwt-{tag}",
        "kubernetes": f"kubernetes://{KUBE_NAMESPACE}/jwt-{tag}",
    }[kind]
    r = run("bundle", "init", "--trust-bundle-store", url, env=env)
    assert r.returncode == 0, r.stderr
    ca = serve(
        tmp_path,
        "--trust-bundle-store",
        url,
        "--mode",
        "standalone",
        env=env | {"SENTRY_JWT_ENABLED": "true"},
    )
    try:
        public = tmp_path / "public"
        r = run("bundle", "show", "--trust-bundle-store", url, "--out", str(public), env=env)
        assert r.returncode == 0 and "jwks.json" in r.stdout, r.stdout + r.stderr
        jwks = json.loads((public / "jwks.json").read_bytes())
        assert jwks["keys"][0]["alg"] == "RS256" and jwks["keys"][0]["kty"] == "RSA"
        with client.channel(f"localhost:{ca.port}", (public / "ca.crt").read_bytes()) as chan:
            resp = sentry_pb2_grpc.CAStub(chan).SignCertificate(
                sentry_pb2.SignCertificateRequest(
                    id="orders",
                    namespace="prod",
                    certificate_signing_request=make_csr(),
                    jwt_audiences=["aws"],
                ),
                timeout=20,
            )
        token = jose_jwt.decode(resp.jwt.value, KeySet.import_key_set(jwks), algorithms=["RS256"])
        assert token.claims["aud"] == ["public", "aws"] and token.header["kid"] == jwks["keys"][0]["kid"]
        assert set(resp.per_audience_jwts) == {"public", "aws"}
        if kind == "kubernetes":  # Dapr's names: jwt.key in the Secret, jwks.json in both
            server = request.getfixturevalue("kube_api").server
            secret = server.get("v1", "secrets", KUBE_NAMESPACE, f"jwt-{tag}")
            assert {"jwt.key", "jwks.json"} <= set(secret["data"])
            cm = server.get("v1", "configmaps", KUBE_NAMESPACE, f"jwt-{tag}")
            assert json.loads(cm["data"]["jwks.json"]) == jwks and "jwt.key" not in cm["data"]
        r = run("inspect", "--trust-bundle-store", url, env=env)
        assert r.returncode == 0 and f"jwt: signing key kid {jwks['keys'][0]['kid']} (RS256)" in r.stdout, (
            r.stdout
        )
    except grpc.RpcError as e:  # pragma: no cover - shown with the CA's own words
        pytest.fail(f"{e.code()}: {e.details()}")
    finally:
        ca.stop()
