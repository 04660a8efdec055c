"""JWT-SVIDs over the wire (design §2, §11): the real CA on loopback over TLS fills response fields
4 and 5 as Dapr's Sentry 1.18 does (the audiences are the trust domain, then ``jwt_audiences``;
``jwt`` one token for all of them; ``per_audience_jwts`` one token per audience), checked the way
Dapr's sidecar reads them (each per-audience token has exactly its key as audience) and verified
by joserfc against the ``jwks.json`` the store holds."""

import base64
import json
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

import sentryca_client as client
from ca_core.errors import BundleError
from ca_core.jwt_svid import JwtAlgorithm, JwtIssuer
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.pki import make_bundle, make_csr, write_bundle

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


def part_of(token: str, n: int) -> dict:
    text = token.split(".")[n]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def claims_of(token: str) -> dict:
    return part_of(token, 1)


def sign(ca, store_dir, **fields):
    anchors = (store_dir / "ca.crt").read_bytes()
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        base = {"id": "orders", "namespace": "prod", "certificate_signing_request": make_csr()}
        return sentry_pb2_grpc.CAStub(chan).SignCertificate(
            sentry_pb2.SignCertificateRequest(**(base | fields)), timeout=10
        )


@pytest.fixture
def jwt_ca(store_dir, request):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, jwt_enabled="true", **getattr(request, "param", {})))
    try:
        yield ca
    finally:
        ca.stop(grace=0)


def metric(ca, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{ca.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize(
    "jwt_ca, alg",
    [
        ({}, "RS256"),
        ({"jwt_signing_algorithm": "ES256"}, "ES256"),
        ({"jwt_signing_algorithm": "EdDSA"}, "EdDSA"),
    ],
    indirect=["jwt_ca"],
)
def test_jwt_and_per_audience_jwts_as_dapr_fills_them(jwt_ca, store_dir, alg):
    resp = sign(jwt_ca, store_dir, trust_domain="example.org", jwt_audiences=["aws", "azure"])
    leaf = client.verify_response(resp, (store_dir / "ca.crt").read_bytes())
    keys = KeySet.import_key_set(json.loads((store_dir / "jwks.json").read_bytes()))
    assert resp.HasField("jwt")
    every = jose_jwt.decode(resp.jwt.value, keys, algorithms=[alg])
    assert every.header["alg"] == alg and every.header["typ"] == "JWT"
    assert every.header["kid"] == json.loads((store_dir / "jwks.json").read_bytes())["keys"][0]["kid"]
    assert every.claims["aud"] == ["example.org", "aws", "azure"]
    assert every.claims["sub"] == "spiffe://example.org/ns/prod/orders" == leaf.spiffe_id
    assert every.claims["exp"] <= int(resp.valid_until.ToDatetime(tzinfo=UTC).timestamp())
    jose_jwt.JWTClaimsRegistry(
        sub={"essential": True, "value": leaf.spiffe_id}, aud={"essential": True, "value": "azure"}
    ).validate(every.claims)
    assert set(resp.per_audience_jwts) == {"example.org", "aws", "azure"}
    for aud, token in resp.per_audience_jwts.items():
        decoded = jose_jwt.decode(token.value, keys, algorithms=[alg])
        assert decoded.claims["aud"] == [aud]  # what Dapr's sidecar insists on
        jose_jwt.JWTClaimsRegistry(aud={"essential": True, "value": aud}).validate(decoded.claims)
    assert metric(jwt_ca, "sentryca_jwt_svids_issued_total") == 4


def test_without_audiences_both_fields_hold_the_trust_domain(jwt_ca, store_dir):
    resp = sign(jwt_ca, store_dir)
    assert claims_of(resp.jwt.value)["aud"] == ["public"]
    assert list(resp.per_audience_jwts) == ["public"]
    assert claims_of(resp.per_audience_jwts["public"].value)["aud"] == ["public"]


def test_jwt_disabled_leaves_both_fields_unset(running_ca, store_dir):
    resp = sign(running_ca, store_dir, jwt_audiences=["aws"])
    assert not resp.HasField("jwt") and len(resp.per_audience_jwts) == 0
    assert not (store_dir / "jwks.json").exists() and not (store_dir / "jwt.key").exists()
    assert metric(running_ca, "sentryca_jwt_svids_issued_total") == 0


def test_bad_audiences_and_an_unsignable_jwt_fail_the_whole_call(jwt_ca, store_dir):
    with pytest.raises(grpc.RpcError) as e:
        sign(jwt_ca, store_dir, jwt_audiences=["aws", ""])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "entry 2 is empty" in e.value.details()
    # Fault injection: a JWT signer whose key cannot sign (an RSA key for ES256). The X.509 path
    # passes; the call must fail as a whole, never answer a certificate without its JWTs.
    state = jwt_ca._state
    signer = state.signer
    broken = JwtIssuer(signer.jwt.key, JwtAlgorithm.ES256, signer.jwt.key_id)
    jwt_ca._state = replace(state, signer=replace(signer, jwt=broken))
    with pytest.raises(grpc.RpcError) as e:
        sign(jwt_ca, store_dir, jwt_audiences=["aws"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot sign a JWT-SVID" in e.value.details()
    assert metric(jwt_ca, "sentryca_jwt_svids_issued_total") == 0
    assert metric(jwt_ca, "dapr_sentry_cert_sign_success_total") == 0


def test_a_start_with_jwt_enabled_adds_the_key_to_a_bundle_without_one(store_dir):
    bundle = make_bundle()
    write_bundle(store_dir, bundle)
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, jwt_enabled="true", jwt_key_id="sentryca-1"))
    try:
        assert (store_dir / "ca.crt").read_bytes() == bundle.anchors_pem  # the X.509 items unchanged
        jwks = json.loads((store_dir / "jwks.json").read_bytes())
        assert [k["kid"] for k in jwks["keys"]] == ["sentryca-1"]
        resp = sign(ca, store_dir)
        assert jose_jwt.decode(resp.jwt.value, KeySet.import_key_set(jwks)).header["kid"] == "sentryca-1"
    finally:
        ca.stop(grace=0)
    # the next start loads the key it added, and a mismatching algorithm is refused at start
    again = CertificateAuthority()
    with pytest.raises(BundleError, match="ES256 needs an ECDSA P-256 key, not RSA 2048"):
        again.start(ca_config(store_dir, jwt_enabled="true", jwt_signing_algorithm="ES256"))
    assert not again.running


def test_iat_is_the_signing_time_and_nbf_allows_the_clock_skew(jwt_ca, store_dir):
    before = int(datetime.now(UTC).timestamp())
    claims = claims_of(sign(jwt_ca, store_dir).jwt.value)
    assert claims["iat"] >= before and claims["nbf"] == claims["iat"] - 15 * 60  # --allowed-clock-skew


def test_the_emf_documents_count_the_jwt_svids_issued():
    from handlers import emf
    from handlers.metrics import Metrics

    metrics = Metrics()
    written: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            written.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    writer = emf.EmfWriter(
        metrics.registry.collect, 60, service="s", out=Out(), clock=lambda: 1_700_000_000.0
    )
    metrics.jwt_issued.inc(3)
    (doc,) = writer.flush()
    assert doc[emf.JWT_SVIDS_ISSUED] == 3
    names = [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert emf.JWT_SVIDS_ISSUED in names and json.loads(written[0]) == doc
    (doc,) = writer.flush()  # what came since the previous document
    assert doc[emf.JWT_SVIDS_ISSUED] == 0


def test_the_audit_record_names_each_tokens_jti_never_a_token(jwt_ca, store_dir, caplog):
    import logging

    from handlers.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="sentryca.audit"):
        resp = sign(jwt_ca, store_dir, jwt_audiences=["aws"])
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "certificate_issued"]
    tokens = [resp.jwt.value, *(t.value for t in resp.per_audience_jwts.values())]
    first, *rest = record.jwt_ids.split(",")
    assert first == claims_of(resp.jwt.value)["jti"]  # a protobuf map keeps no order: the rest as a set
    assert (
        set(rest) == {claims_of(t.value)["jti"] for t in resp.per_audience_jwts.values()} and len(rest) == 2
    )
    line = JsonFormatter().format(record)
    assert json.loads(line)["jwt_ids"] == record.jwt_ids
    assert not any(t.split(".")[2] in line for t in tokens)


def test_a_polling_ca_refuses_a_bundle_that_drops_its_jwt_key_and_keeps_signing_with_it(store_dir):
    from adapters.stores import FileBundleStore
    from ca_core.bundle import parse_bundle
    from ca_core.jwt_svid import new_jwt_items

    from support.wait import wait_until

    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, jwt_enabled="true", store_poll_interval="1s"))
    try:
        kid = ca.signer.jwt.key_id
        stored = FileBundleStore(store_dir).load()
        other = parse_bundle(stored.items).with_jwt(*new_jwt_items(JwtAlgorithm.RS256))  # same root
        assert FileBundleStore(store_dir).replace(other.to_items(), stored.version)

        def refused() -> float:
            return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0

        wait_until(lambda: refused() >= 1, "the poll refuses the bundle without the JWT key")
        assert ca.signer.jwt.key_id == kid
        token = sign(ca, store_dir).jwt.value
        assert part_of(token, 0)["kid"] == kid
        ready, details = ca.readiness()
        assert ready and "does not publish the JWT key" in details["degraded"]["detail"]
    finally:
        ca.stop(grace=0)
