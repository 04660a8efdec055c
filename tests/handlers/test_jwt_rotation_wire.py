"""JWT key rotation on a real CA (design §5.17): ``CertificateAuthority`` on loopback with an
injected clock and ``--auto-rotate``, its own upkeep (``maintain()``) taking the JWT steps with
the real rules into a file store. Over gRPC/TLS, the tokens carry the new ``kid`` only once the
publish period has passed since the key appeared in ``jwks.json``; every token answered verifies
(PyJWT) against the store's JWK Set of that hour and against the one a reader fetched an hour
before (cached for max-age); the steps are counted and audited. Then ``sentryca rotate jwt-key``
as an operator runs it, and ``inspect`` showing each key's state; a polling CA taking
``rotate jwt-key --now`` and refusing a bundle that drops the old key before its time."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import jwt as pyjwt

import sentryca_client as client
from adapters.stores import FileBundleStore
from ca_core.bundle import JWKS
from ca_core.jwt_svid import JwtAlgorithm, key_ids
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.cli import run_sentryca as run
from support.pki import make_bundle, make_csr, write_bundle

STEP = timedelta(hours=1)  # = --expiry-check-interval
DAYS = 3
# The injected clock walks the DAYS before the real now, so that every TLS server certificate the
# CA issues on it (lifetime --workload-cert-ttl 96h) is valid for the real clock gRPC checks with.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=DAYS, hours=1)


def _sign(ca, anchors: bytes) -> str:
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        resp = sentry_pb2_grpc.CAStub(chan).SignCertificate(
            sentry_pb2.SignCertificateRequest(
                id="orders", namespace="prod", certificate_signing_request=make_csr()
            ),
            timeout=10,
        )
    return resp.jwt.value


def _verifies(token: str, jwks: bytes, now: datetime) -> bool:
    kid = pyjwt.get_unverified_header(token)["kid"]
    keys = {k.key_id: k for k in pyjwt.PyJWKSet.from_json(jwks.decode()).keys}
    if kid not in keys:
        return False
    claims = pyjwt.decode(
        token,
        keys[kid].key,
        algorithms=["ES256"],
        audience="public",  # the trust domain of the request (the default, as Dapr's)
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims["nbf"] <= now.timestamp() <= claims["exp"]


def test_a_running_ca_signs_with_the_new_kid_only_after_the_publish_period(tmp_path, caplog):
    store_dir = tmp_path / "credentials"
    clock = [START]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(
        ca_config(
            store_dir,
            jwt_enabled="true",
            jwt_signing_algorithm="ES256",
            jwt_ttl="1h",
            jwt_key_ttl="24h",
            auto_rotate="true",
            expiry_check_interval="1h",
            workload_cert_ttl="96h",
        )
    )
    anchors = (store_dir / "ca.crt").read_bytes()
    store = FileBundleStore(store_dir)
    first_seen: dict[str, datetime] = {}  # kid → when jwks.json first published it
    signed_with: dict[str, datetime] = {}  # kid → first answer carrying it
    previous_jwks = store.load().items[JWKS]
    try:
        with caplog.at_level(logging.INFO, logger="sentryca.audit"):
            while clock[0] < START + timedelta(days=DAYS):
                clock[0] += STEP
                now = clock[0]
                ca.maintain()
                jwks = store.load().items[JWKS]
                for kid in key_ids(jwks):
                    first_seen.setdefault(kid, now)
                token = _sign(ca, anchors)
                kid = pyjwt.get_unverified_header(token)["kid"]
                signed_with.setdefault(kid, now)
                assert _verifies(token, jwks, now), (now, kid)
                # a reader that fetched the JWK Set an hour ago and cached it for max-age
                assert _verifies(token, previous_jwks, now), (now, kid, "cached")
                previous_jwks = jwks
        steps = [r for r in caplog.records if getattr(r, "event", None) == "rotation_step"]
    finally:
        ca.stop(grace=0)
    # the key's start recorded at the first check, then a rotation about every 24 h
    assert len(signed_with) >= 3
    publish = timedelta(hours=1) + STEP + timedelta(minutes=5)  # max-age + notice + federation
    initial = min(signed_with, key=signed_with.get)
    for kid, at in signed_with.items():
        if kid != initial:
            assert at - first_seen[kid] >= publish, (kid, first_seen[kid], at)
    kinds = {(r.kind, r.step, r.trigger) for r in steps}
    assert {("jwt", "prepare", "auto"), ("jwt", "activate", "auto"), ("jwt", "prune", "auto")} <= kinds
    assert next((r.kind, r.step) for r in steps) == ("jwt", "record")
    counted = {
        (s.labels["kind"], s.labels["step"])
        for m in ca.metrics.registry.collect()
        if m.name == "sentryca_rotation_steps"
        for s in m.samples
        if s.name.endswith("_total") and s.value > 0
    }
    assert {("jwt", "prepare"), ("jwt", "activate"), ("jwt", "prune")} <= counted


def test_rotate_jwt_key_then_advance_and_inspect_show_each_key_with_its_state(tmp_path):
    store = tmp_path / "store"
    write_bundle(store, make_bundle(jwt=JwtAlgorithm.ES256))
    url = f"file://{store}"
    old_kid = key_ids((store / "jwks.json").read_bytes())[0]
    r = run("rotate", "jwt-key", "--trust-bundle-store", url)  # the new key: the current key's algorithm
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rotation_step: jwt prepare (manual)" in r.stderr  # the audit record
    new_kid = next(k for k in key_ids((store / "jwks.json").read_bytes()) if k != old_kid)
    r = run("rotate", "jwt-key", "--trust-bundle-store", url)
    assert r.returncode != 0 and "already prepared" in r.stdout + r.stderr
    r = run("rotate", "advance", "--trust-bundle-store", url)
    assert r.returncode == 0 and f"the activation of JWT key kid {new_kid}" in r.stdout
    r = run("inspect", "--trust-bundle-store", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"jwks   key kid {new_kid}  ES256 EC  prepared since " in r.stdout
    assert f"jwt     prepared  kid {new_kid} (ES256)" in r.stdout
    assert f"jwks   key kid {old_kid}  ES256 EC  active (since unknown)" in r.stdout
    # --now: the prepared key signs at once, the old one retires
    r = run("rotate", "jwt-key", "--trust-bundle-store", url, "--now")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "breaks" in r.stderr or "refuse its tokens" in r.stderr
    r = run("inspect", "--trust-bundle-store", url)
    assert f"jwks   key kid {new_kid}  ES256 EC  active since " in r.stdout
    assert f"jwks   key kid {old_kid}  ES256 EC  retiring since " in r.stdout
    doc = json.loads((store / "rotation.json").read_bytes())
    assert doc["jwt"]["retiring"][0]["kid"] == old_kid and doc["jwt"]["prepared"] is None
    # a pinned kid: refused, nothing written
    before = (store / "jwks.json").read_bytes()
    r = run("rotate", "jwt-key", "--trust-bundle-store", url, "--jwt-key-id", new_kid)
    assert r.returncode != 0 and "--jwt-key-id" in r.stdout + r.stderr
    assert (store / "jwks.json").read_bytes() == before


def test_a_polling_ca_takes_rotate_jwt_key_now_and_refuses_an_early_removal_of_the_old_key(tmp_path):
    from ca_core.bundle import ROTATION_STATE, parse_bundle
    from ca_core.jwt_svid import jwks_document, parse_jwks

    from support.wait import wait_until

    store_dir = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(
        ca_config(store_dir, jwt_enabled="true", jwt_signing_algorithm="ES256", store_poll_interval="1s")
    )
    try:
        anchors = (store_dir / "ca.crt").read_bytes()
        old_kid = ca.signer.jwt.key_id
        r = run("rotate", "jwt-key", "--issuer-credentials", str(store_dir), "--now")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: ca.signer.jwt.key_id != old_kid, "the poll loads the rotated bundle")
        new_kid = ca.signer.jwt.key_id
        token = _sign(ca, anchors)
        assert pyjwt.get_unverified_header(token)["kid"] == new_kid
        assert _verifies(token, (store_dir / "jwks.json").read_bytes(), datetime.now(UTC))
        # a bundle written around the CA that drops the retiring key before its prune_after
        store = FileBundleStore(store_dir)
        stored = store.load()
        assert json.loads(stored.items[ROTATION_STATE])["jwt"]["retiring"][0]["kid"] == old_kid
        kept = [e for e in parse_jwks(stored.items[JWKS]) if e["kid"] != old_kid]
        early = {**stored.items, JWKS: jwks_document(kept)}
        parse_bundle(early)  # a usable bundle: only continuity refuses it
        assert store.replace(early, stored.version)

        def refused() -> float:
            return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0

        wait_until(lambda: refused() >= 1, "the poll refuses the early removal")
        ready, details = ca.readiness()
        assert ready and f"does not publish the JWT key(s) {old_kid}" in details["degraded"]["detail"]
        assert old_kid in key_ids(ca.signer.bundle.jwks)  # still published by the bundle in force
    finally:
        ca.stop(grace=0)
