"""Serverless federation (design §9.9): the OIDC discovery document and the JWKS published to a
bucket of their own on moto's S3 (moto in server mode, real HTTP), read back from the published
location by real OIDC clients (urllib for the discovery document, PyJWT's PyJWKClient for the
JWKS) that verify a token signed with the test key; idempotent writes, retried failures, the
CA's lifecycle, and the configuration's refusal of the bundle's own bucket.

moto's STS ``AssumeRoleWithWebIdentity`` checks nothing (token, audience, provider, trust policy),
so the README test that uses it (below) proves only the call shape the README shows."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import jwt
import pytest

from adapters.oidc_federation import S3DocumentPublisher
from ca_core.errors import ConfigError, Unavailable
from handlers.server.federation import Federation

from support import REPO_ROOT
from support.aws import aws_client
from support.jwks_server import SigningKey, claims, jwks
from support.wait import wait_until

SPIFFE_ID = "spiffe://public/ns/default/orders"


def public_read(s3, bucket: str, prefixes: tuple[str, ...]) -> None:
    """The template's OidcBucketPolicy: anyone may read the two documents under each prefix, and
    nothing else (moto answers an unsigned read 403 without it, as S3 does)."""
    keys = [f"{p}{n}" for p in prefixes for n in ("jwks.json", ".well-known/openid-configuration")]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicReadOfTheOidcDocuments",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in keys],
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


@pytest.fixture
def docs_bucket(aws_env):
    """A fresh bucket for the documents, readable by anyone at the prefixes the tests use:
    (name, S3 client)."""
    s3 = aws_client("s3", aws_env["AWS_ENDPOINT_URL"])
    name = f"oidc-docs-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    public_read(s3, name, ("", "sentryca/", "p/", "t/", "oidc/"))
    return name, s3


@pytest.fixture(scope="module")
def keys():
    return [SigningKey("rsa-1", "RS256"), SigningKey("ec-1", "ES256")]


def provider_url(aws_env, bucket: str, prefix: str) -> str:
    """Where moto serves the bucket's objects to anyone (path style; S3 under the template's
    bucket policy does the same): the issuer of the tokens here."""
    return f"{aws_env['AWS_ENDPOINT_URL']}/{bucket}/{prefix}"


# moto's router sends an unsigned GET of a path ending in /.well-known/openid-configuration to its
# Cognito fake, whatever the bucket in the path; an Authorization header that names the s3 service
# (moto checks no signature) routes it to S3. For moto only: AWS reads the object unsigned.
MOTO_S3_ROUTE = {"Authorization": "AWS4-HMAC-SHA256 Credential=anonymous/20260101/us-east-1/s3/aws4_request"}


def discover(issuer: str) -> dict:
    """The discovery document of ``issuer``, fetched as an OIDC relying party does (no AWS
    credentials: a public read)."""
    request = urllib.request.Request(issuer + "/.well-known/openid-configuration", headers=MOTO_S3_ROUTE)
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_published_documents_are_what_an_oidc_client_verifies_tokens_with(aws_env, docs_bucket, keys):
    bucket, s3 = docs_bucket
    issuer = provider_url(aws_env, bucket, "sentryca")
    document = json.dumps(jwks(*keys)).encode()
    federation = Federation(S3DocumentPublisher(bucket, "sentryca", client=s3), issuer, lambda: document)
    assert federation.sync()
    doc = discover(issuer)
    assert doc["issuer"] == issuer  # iss = the provider URL
    assert doc["jwks_uri"] == issuer + "/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    client = jwt.PyJWKClient(doc["jwks_uri"], cache_keys=False)
    for key in keys:
        token = key.token(claims(SPIFFE_ID, "sts.amazonaws.com", iss=issuer))
        decoded = jwt.decode(
            token,
            client.get_signing_key_from_jwt(token).key,
            algorithms=[key.alg],
            audience="sts.amazonaws.com",
            issuer=doc["issuer"],
        )
        assert decoded["sub"] == SPIFFE_ID
    with pytest.raises(jwt.InvalidIssuerError):
        token = keys[0].token(claims(SPIFFE_ID, "sts.amazonaws.com", iss="https://elsewhere.example"))
        jwt.decode(token, client.get_signing_key_from_jwt(token).key, algorithms=["RS256"],
                   audience="sts.amazonaws.com", issuer=doc["issuer"])  # fmt: skip
    for key in ("sentryca/jwks.json", "sentryca/.well-known/openid-configuration"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/json"
        assert head["CacheControl"] == "public, max-age=3600"
    assert s3.get_object(Bucket=bucket, Key="sentryca/jwks.json")["Body"].read() == document
    # the policy opens just the two documents: anything else in the bucket stays private
    s3.put_object(Bucket=bucket, Key="sentryca/other.json", Body=b"{}")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(issuer + "/other.json", timeout=10)
    assert denied.value.code == 403


def test_publishing_is_idempotent_and_follows_every_jwks_change(aws_env, docs_bucket, keys):
    bucket, s3 = docs_bucket
    issuer = provider_url(aws_env, bucket, "")
    publisher = S3DocumentPublisher(bucket, client=s3)
    from ca_core.oidc import issuer_documents

    first = issuer_documents(issuer, json.dumps(jwks(keys[0])).encode())
    assert publisher.publish(first) == ["jwks.json", ".well-known/openid-configuration"]  # JWKS first
    assert publisher.publish(first) == []  # already there: nothing written
    rotated = issuer_documents(issuer, json.dumps(jwks(keys[0], keys[1])).encode())
    assert publisher.publish(rotated) == ["jwks.json", ".well-known/openid-configuration"]
    client = jwt.PyJWKClient(discover(issuer.rstrip("/"))["jwks_uri"], cache_keys=False)
    token = keys[1].token(claims(SPIFFE_ID, "aws", iss=issuer))
    assert client.get_signing_key_from_jwt(token).key_id == "ec-1"
    # only the JWKS changes when only its bytes do (the algorithms stay): one write
    reordered = issuer_documents(issuer, json.dumps({"keys": jwks(keys[0], keys[1])["keys"][::-1]}).encode())
    assert publisher.publish(reordered) == ["jwks.json", ".well-known/openid-configuration"]


def test_a_start_replaces_stale_documents_and_skips_current_ones(aws_env, docs_bucket, keys):
    bucket, s3 = docs_bucket
    issuer = provider_url(aws_env, bucket, "p")
    s3.put_object(Bucket=bucket, Key="p/jwks.json", Body=b'{"keys":[]}')
    document = json.dumps(jwks(keys[0])).encode()
    assert Federation(S3DocumentPublisher(bucket, "p", client=s3), issuer, lambda: document).sync()
    assert s3.get_object(Bucket=bucket, Key="p/jwks.json")["Body"].read() == document
    # a second CA (or a restart) finds them current and writes nothing
    publisher = S3DocumentPublisher(bucket, "p", client=s3)
    from ca_core.oidc import issuer_documents

    assert publisher.publish(issuer_documents(issuer, document)) == []


def test_failures_are_logged_and_retried_until_the_bucket_is_there(aws_env, keys, caplog):
    s3 = aws_client("s3", aws_env["AWS_ENDPOINT_URL"])
    bucket = f"oidc-later-{uuid.uuid4().hex[:8]}"
    issuer = provider_url(aws_env, bucket, "")
    document = json.dumps(jwks(keys[0])).encode()
    publisher = S3DocumentPublisher(bucket, client=s3)
    with pytest.raises(Unavailable) as e:
        from ca_core.oidc import issuer_documents

        publisher.publish(issuer_documents(issuer, document))
    assert e.value.reason == "store_misconfigured"  # NoSuchBucket
    federation = Federation(publisher, issuer, lambda: document, interval=0.05)
    with caplog.at_level(logging.WARNING, logger="sentryca"):
        assert not federation.sync()
    assert federation.failures == 1 and "cannot publish" in caplog.text
    s3.create_bucket(Bucket=bucket)
    public_read(s3, bucket, ("",))
    assert federation.sync() and federation.failures == 0
    assert discover(issuer.rstrip("/"))["issuer"] == issuer.rstrip("/")


def test_the_thread_publishes_changes_and_never_blocks_its_caller(aws_env, docs_bucket, keys):
    bucket, s3 = docs_bucket
    issuer = provider_url(aws_env, bucket, "t")
    current = {"jwks": None}
    federation = Federation(
        S3DocumentPublisher(bucket, "t", client=s3), issuer, lambda: current["jwks"], interval=60
    ).start()
    try:
        current["jwks"] = json.dumps(jwks(keys[0])).encode()
        federation.notify()  # what the CA does after a new state is in force

        def published() -> bytes | None:
            try:
                return s3.get_object(Bucket=bucket, Key="t/jwks.json")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return None

        wait_until(lambda: published() == current["jwks"], "the first JWKS published", timeout=30)
        current["jwks"] = json.dumps(jwks(keys[0], keys[1])).encode()
        federation.notify()
        wait_until(lambda: published() == current["jwks"], "the rotated JWKS published", timeout=30)
    finally:
        federation.stop()


def test_a_jwks_with_private_material_is_never_published(aws_env, docs_bucket, keys):
    from jwt.algorithms import RSAAlgorithm

    bucket, s3 = docs_bucket
    leaked = json.dumps({"keys": [RSAAlgorithm.to_jwk(keys[0].key, as_dict=True)]}).encode()
    federation = Federation(S3DocumentPublisher(bucket, client=s3), "https://x.example", lambda: leaked)
    assert not federation.sync()
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_the_ca_publishes_at_start_with_its_bundle_s_jwks(aws_env, docs_bucket, store_dir):
    from handlers.server import CertificateAuthority

    from support.ca import ca_config

    bucket, s3 = docs_bucket
    url = f"https://{bucket}.s3.us-east-1.amazonaws.com/oidc"
    flags = {
        "jwt_enabled": "true",
        "jwt_issuer": url,
        "oidc_federation_bucket": bucket,
        "oidc_federation_prefix": "oidc",
        "oidc_federation_provider_url": url,
    }
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, **flags))
    try:
        wait_until(lambda: s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 2, "published", timeout=30)
        body = s3.get_object(Bucket=bucket, Key="oidc/.well-known/openid-configuration")["Body"].read()
        assert json.loads(body)["issuer"] == url
        assert json.loads(body)["jwks_uri"] == url + "/jwks.json"
        published = s3.get_object(Bucket=bucket, Key="oidc/jwks.json")["Body"].read()
        assert json.loads(published) == json.loads((store_dir / "jwks.json").read_bytes())  # the bundle's
        publisher = ca.federation
        ca.restart(ca_config(store_dir, **flags))  # same settings: the same publisher, notified
        assert ca.federation is publisher
        ca.restart(ca_config(store_dir, jwt_enabled="true", jwt_issuer=url))  # switched off
        assert ca.federation is None
    finally:
        ca.stop(grace=0)


def test_the_configuration_refuses_the_bundle_s_own_bucket(store_dir):
    from support.ca import ca_config

    with pytest.raises(ConfigError, match="holds the trust bundle"):
        ca_config(
            store_dir,
            trust_bundle_store="s3://bundles/sentry/bundle.json",
            oidc_federation_bucket="bundles",
            oidc_federation_provider_url="https://bundles.s3.us-east-1.amazonaws.com",
        )
    with pytest.raises(ConfigError, match="--oidc-federation-bucket needs --jwt-enabled"):
        ca_config(store_dir, oidc_federation_bucket="docs", oidc_federation_provider_url="https://x.example")
    with pytest.raises(ConfigError, match="must be --oidc-federation-provider-url"):
        ca_config(
            store_dir,
            jwt_enabled="true",
            jwt_issuer="https://other.example",
            oidc_federation_bucket="docs",
            oidc_federation_provider_url="https://x.example",
        )
    for flags, message in (
        ({"oidc_federation_bucket": "docs"}, "--oidc-federation-provider-url is required"),
        ({"oidc_federation_provider_url": "https://x.example"}, "needs --oidc-federation-bucket"),
        ({"oidc_federation_bucket": "docs", "oidc_federation_provider_url": "http://x.example"}, "https"),
        (
            {"oidc_federation_bucket": "Bad_Bucket", "oidc_federation_provider_url": "https://x"},
            "bucket name",
        ),
        (
            {
                "oidc_federation_bucket": "docs",
                "oidc_federation_provider_url": "https://x",
                "oidc_federation_prefix": "/oidc",
            },
            "must not start with '/'",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            ca_config(store_dir, **flags)


# -- the README's exchange of a JWT-SVID for AWS credentials, run as written against moto --------

EXAMPLE = re.compile(r"<!-- test: assume-role-with-web-identity -->\n```python\n(.*?)```", re.S)


def test_the_readme_assume_role_with_web_identity_example_runs_against_moto(aws_env, tmp_path, keys):
    (code,) = EXAMPLE.findall((REPO_ROOT / "README.md").read_text())
    iam = aws_client("iam", aws_env["AWS_ENDPOINT_URL"])
    issuer = f"https://oidc-{uuid.uuid4().hex[:8]}.s3.us-east-1.amazonaws.com/sentryca"
    # the provider and the role as the template makes them (OidcProvider, OidcExampleRole)
    provider = iam.create_open_id_connect_provider(Url=issuer, ClientIDList=["sts.amazonaws.com"])
    host = issuer.removeprefix("https://")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider["OpenIDConnectProviderArn"]},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{host}:aud": "sts.amazonaws.com"},
                    "StringLike": {f"{host}:sub": "spiffe://public/ns/default/*"},
                },
            }
        ],
    }
    role = iam.create_role(
        RoleName=f"orders-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument=json.dumps(trust)
    )
    token_file = tmp_path / "jwt-svid"
    token_file.write_text(keys[0].token(claims(SPIFFE_ID, "sts.amazonaws.com", iss=issuer)))
    env = os.environ | {"ROLE_ARN": role["Role"]["Arn"], "JWT_SVID_FILE": str(token_file)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("assumed ") and ":assumed-role/" in out, out


def test_a_stop_does_not_wait_on_a_hanging_publication():
    """A CA stop or restart stops the thread without waiting for S3: stop returns while the
    publication still hangs, and the thread ends once it returns."""
    import threading

    from botocore.exceptions import EndpointConnectionError

    entered, release = threading.Event(), threading.Event()

    class Hanging:  # an S3 endpoint that takes its time, as the SDK's read timeout allows
        def get_object(self, **kwargs):
            entered.set()
            release.wait(60)
            raise EndpointConnectionError(endpoint_url="https://s3.example")

    federation = Federation(
        S3DocumentPublisher("docs", client=Hanging()), "https://x.example", lambda: b'{"keys":[]}'
    ).start()
    assert entered.wait(30)
    federation.stop(wait=0.1)
    thread = federation._thread
    assert thread is not None and thread.is_alive()  # stop returned; the publication still hangs
    release.set()
    thread.join(30)
    assert not thread.is_alive()
