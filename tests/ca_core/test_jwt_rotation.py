"""JWT key rotation (design §5.17): an injected clock walks rotations; at every step every live
token verifies against every JWK Set a reader can hold; the document's strict codec; continuity.

A **writer** takes :func:`advance` at each expiry check (hourly). A **signer** (any CA) signs with
the key of any store version current during the last notice bound N (it may not have seen the
newest write yet). A **reader** holds any JWK Set that was current in the store at some time in
the last ``max-age + N + federation delay`` (fetched just before a change and cached for max-age,
from a CA or a federation copy lagging behind). Tokens are verified by PyJWT's own JWK parsing."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import jwt as pyjwt
import pytest

from ca_core.bundle import JWKS, ROTATION_STATE, TrustBundle, parse_bundle, parse_public_bundle
from ca_core.config import Config
from ca_core.continuity import judge_replacement
from ca_core.errors import BundleError, FailedPrecondition
from ca_core.jwt_svid import JwtAlgorithm, key_ids, parse_jwks, thumbprint
from ca_core.oidc import MAX_AGE_SECONDS
from ca_core.policy import jwt_issuer, jwt_publish_period, jwt_retire_period, rotation_policy
from ca_core.rotation import codec
from ca_core.rotation.document import public_items, released_jwt_keys
from ca_core.rotation.jwt_keys import rotate_jwt_key
from ca_core.rotation.rules import advance, next_step_due
from ca_core.rotation.state import FEDERATION_DELAY, Rotation

from support.pki import NOW, make_bundle

SUBJECT = "spiffe://localhost/ns/default/app"


def _cfg(**kw) -> Config:
    return Config(jwt_enabled=True, auto_rotate=True, jwt_signing_algorithm=JwtAlgorithm.ES256, **kw)


def _items(bundle: TrustBundle, state) -> dict[str, bytes]:
    return Rotation(bundle, state, ()).items()


class World:
    """The store's history: (time written, items), and what signers and readers can hold."""

    def __init__(self, cfg: Config, bundle: TrustBundle):
        self.cfg = cfg
        self.notice = cfg.store_poll_interval or cfg.expiry_check_interval
        self.reader_lag = timedelta(seconds=MAX_AGE_SECONDS) + self.notice + FEDERATION_DELAY
        self.history: list[tuple[object, dict[str, bytes]]] = [(NOW - timedelta(days=1), bundle.to_items())]

    def current_during(self, start, end) -> list[dict[str, bytes]]:
        """Every version current in the store at some time in [start, end]."""
        out = []
        for n, (written, items) in enumerate(self.history):
            superseded = self.history[n + 1][0] if n + 1 < len(self.history) else None
            if written <= end and (superseded is None or superseded > start):
                out.append(items)
        return out

    def signers(self, at) -> list[TrustBundle]:
        return [parse_bundle(i) for i in self.current_during(at - self.notice, at)]

    def reader_sets(self, at) -> list[bytes]:
        return [i[JWKS] for i in self.current_during(at - self.reader_lag, at)]


def _verify(token: str, jwks: bytes, at, skew: timedelta) -> bool:
    kid = pyjwt.get_unverified_header(token)["kid"]
    keys = {k.key_id: k for k in pyjwt.PyJWKSet.from_json(jwks.decode()).keys}
    if kid not in keys:
        return False
    try:
        pyjwt.decode(
            token,
            keys[kid].key,
            algorithms=[keys[kid].algorithm_name],
            audience="localhost",
            leeway=skew,
            options={"verify_iat": False, "verify_nbf": False, "verify_exp": False},
        )
    except pyjwt.PyJWTError:
        return False
    exp = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    return at.timestamp() <= exp + skew.total_seconds()


def walk(cfg: Config, alg: JwtAlgorithm, days: int, step: timedelta, policy_change=None):
    """Walk ``days`` from NOW in ``step``s; returns (world, kids that signed, failures)."""
    bundle = make_bundle(NOW - timedelta(days=1), jwt=alg)
    world = World(cfg, bundle)
    policy = rotation_policy(cfg)
    if policy_change is not None:
        policy = replace(policy, **policy_change)
    state, items = codec.parse_state(bundle.to_items(), bundle), bundle.to_items()
    tokens: list[tuple[object, str]] = []
    failures, kids = [], []
    next_check, t, end = NOW, NOW, NOW + timedelta(days=days)
    while t <= end:
        if t >= next_check:
            result = advance(bundle, state, t, policy)
            if result is not None:
                new_items = result.items()
                verdict = judge_replacement(
                    parse_public_bundle(items), items, parse_public_bundle(new_items), new_items, t
                )
                # (the controls' broken policies write what continuity refuses: not checked there)
                assert verdict.allowed or policy_change, (t, [s.action for s in result.steps], verdict)
                bundle, state, items = result.bundle, result.state, new_items
                world.history.append((t, items))
            next_check = t + cfg.expiry_check_interval
        for signer_bundle in world.signers(t):
            issuer = jwt_issuer(cfg, signer_bundle)
            assert issuer is not None
            kids.append(issuer.key_id)
            tokens.append((t, issuer.issue(SUBJECT, "localhost", [], t).jwt))
        tokens = [(s, tok) for s, tok in tokens if t <= s + cfg.jwt_ttl + cfg.allowed_clock_skew]
        for s, token in tokens:
            for jwks in world.reader_sets(t):
                if not _verify(token, jwks, t, cfg.allowed_clock_skew):
                    failures.append((t - NOW, s - NOW, pyjwt.get_unverified_header(token)["kid"]))
        t += step
    return world, state, list(dict.fromkeys(kids)), failures


@pytest.mark.parametrize(
    ("settings", "step", "days"),
    [
        ({"jwt_ttl": timedelta(hours=2), "jwt_key_ttl": timedelta(hours=24)}, timedelta(minutes=15), 3),
        (
            {"jwt_key_ttl": timedelta(hours=48), "store_poll_interval": timedelta(minutes=5)},
            timedelta(hours=1),
            5,
        ),
    ],
    ids=["2h-tokens-15m-steps", "24h-tokens-polling-1h-steps"],
)
def test_every_live_token_verifies_against_every_jwks_a_reader_can_hold(settings, step, days):
    cfg = _cfg(**settings)
    world, state, kids, failures = walk(cfg, JwtAlgorithm.ES256, days, step)
    assert failures == []
    # The walk rotated every --jwt-key-ttl, counted from the first check for the key of unknown age.
    assert len(kids) >= days * timedelta(days=1) // cfg.jwt_key_ttl
    first_state = json.loads(world.history[1][1][ROTATION_STATE])["jwt"]
    assert first_state["active"]["since"] == NOW.isoformat() and first_state["prepared"] is None
    actions = [json.loads(i[ROTATION_STATE])["jwt"] for _, i in world.history[1:]]
    assert any(a["retiring"] for a in actions) and state.removed_jwt  # keys retired and pruned
    # No JWK Set ever held more than the signing key, one prepared and the retiring ones.
    assert max(len(parse_jwks(i[JWKS])) for _, i in world.history) <= 3


def test_the_walk_catches_a_key_that_signs_before_readers_have_it():
    # Control: with no publish period, a reader holding a JWK Set cached just before the change
    # refuses the new key's tokens: the walk above would see it.
    cfg = _cfg(jwt_ttl=timedelta(hours=2), jwt_key_ttl=timedelta(hours=24))
    _, _, _, failures = walk(cfg, JwtAlgorithm.ES256, 1, timedelta(minutes=15), {"jwt_publish": timedelta(0)})
    assert failures
    # and with no retire period, tokens of the old key fail once it is pruned
    _, _, _, failures = walk(cfg, JwtAlgorithm.ES256, 2, timedelta(minutes=15), {"jwt_retire": timedelta(0)})
    assert failures


def test_the_periods_follow_the_settings():
    cfg = _cfg(store_poll_interval=timedelta(minutes=5), jwt_ttl=timedelta(hours=2))
    assert jwt_publish_period(cfg) == timedelta(hours=1, minutes=5) + FEDERATION_DELAY
    assert jwt_retire_period(cfg) == timedelta(hours=2, minutes=20)
    policy = rotation_policy(_cfg(jwt_key_id="pinned", jwt_key_ttl=timedelta(0)))
    assert policy.jwt_key_id_fixed and policy.jwt_key_lifetime is None


@pytest.mark.parametrize("alg", list(JwtAlgorithm))
def test_the_manual_rotation_publishes_then_signs_then_prunes(alg):
    cfg = Config(
        jwt_enabled=True, jwt_signing_algorithm=alg
    )  # no --auto-rotate: a rotation in progress goes on
    policy = rotation_policy(cfg)
    bundle = make_bundle(jwt=alg)
    old_kid = jwt_issuer(cfg, bundle).key_id
    state = codec.parse_state(bundle.to_items(), bundle)
    r = rotate_jwt_key(bundle, state, NOW, policy)
    assert [s.action for s in r.steps] == ["prepare"] and r.steps[0].kind == "jwt"
    new_kid = r.state.prepared_jwt.kid
    assert key_ids(r.bundle.jwks) == (old_kid, new_kid)
    assert jwt_issuer(cfg, r.bundle).key_id == old_kid  # published, not signing
    with pytest.raises(FailedPrecondition, match="already prepared"):
        rotate_jwt_key(r.bundle, r.state, NOW, policy)
    # strict codec: what was written reads back
    items = r.items()
    b, s = parse_bundle(items), codec.parse_state(items, parse_bundle(items))
    assert s.prepared_jwt.kid == new_kid and s.prepared_jwt.activate_after == NOW + policy.jwt_publish
    assert advance(b, s, NOW + policy.jwt_publish - timedelta(seconds=1), policy) is None
    due = next_step_due(b, s, policy)
    assert due == (NOW + policy.jwt_publish, f"the activation of JWT key kid {new_kid}")
    t1 = NOW + policy.jwt_publish
    a = advance(b, s, t1, policy)
    assert [x.action for x in a.steps] == ["activate"]
    assert jwt_issuer(cfg, a.bundle).key_id == new_kid
    assert key_ids(a.bundle.jwks) == (old_kid, new_kid)
    items2 = a.items()
    s2 = codec.parse_state(items2, parse_bundle(items2))
    assert s2.jwt_since == t1 and [r.kid for r in s2.retiring_jwt] == [old_kid]
    assert s2.retiring_jwt[0].prune_after == t1 + policy.jwt_retire
    lines = codec.describe(s2, a.bundle)
    assert f"jwt     active    kid {new_kid} ({alg.value})  since {t1.isoformat()}  signs" in lines
    assert any(line.startswith(f"jwt     retiring  kid {old_kid}") for line in lines)
    t2 = t1 + policy.jwt_retire
    assert advance(a.bundle, s2, t2 - timedelta(seconds=1), policy) is None
    p = advance(a.bundle, s2, t2, policy)
    assert [x.action for x in p.steps] == ["prune"] and key_ids(p.bundle.jwks) == (new_kid,)
    assert [x.kid for x in p.state.removed_jwt] == [old_kid]


def test_now_signs_at_once_and_keeps_the_old_key():
    cfg = Config(jwt_enabled=True, jwt_signing_algorithm=JwtAlgorithm.ES256)
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    old_kid = jwt_issuer(cfg, bundle).key_id
    r = rotate_jwt_key(bundle, codec.EMPTY, NOW, rotation_policy(cfg), at_once=True)
    assert [s.action for s in r.steps] == ["prepare", "rotate"]
    assert jwt_issuer(cfg, r.bundle).key_id != old_kid and old_kid in key_ids(r.bundle.jwks)
    assert r.state.retiring_jwt[0].kid == old_kid


def test_rotation_is_refused_without_a_key_or_with_a_pinned_kid():
    cfg = Config(jwt_enabled=True, jwt_key_id="pinned")
    with pytest.raises(FailedPrecondition, match="no JWT key"):
        rotate_jwt_key(make_bundle(), codec.EMPTY, NOW, rotation_policy(cfg))
    with pytest.raises(FailedPrecondition, match="--jwt-key-id"):
        rotate_jwt_key(make_bundle(jwt=JwtAlgorithm.ES256), codec.EMPTY, NOW, rotation_policy(cfg))
    auto = rotation_policy(Config(jwt_enabled=True, auto_rotate=True, jwt_key_id="pinned"))
    assert advance(make_bundle(jwt=JwtAlgorithm.ES256), codec.EMPTY, NOW, auto) is None


def test_continuity_refuses_an_early_removal_and_accepts_the_pruning():
    cfg = Config(jwt_enabled=True)
    policy = rotation_policy(cfg)
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    r = rotate_jwt_key(bundle, codec.EMPTY, NOW, policy, at_once=True)
    current = r.items()
    old_tp = r.state.retiring_jwt[0].thumbprint
    # a replacement dropping the retiring key before its prune_after: refused
    early = dict(current)
    entries = [e for e in parse_jwks(current[JWKS]) if e["kid"] != r.state.retiring_jwt[0].kid]
    early[JWKS] = json.dumps({"keys": entries}).encode()
    at = NOW + policy.jwt_retire - timedelta(minutes=1)
    pub = parse_public_bundle(current)
    verdict = judge_replacement(pub, current, parse_public_bundle(early), early, at)
    assert not verdict.allowed and verdict.dropped_jwt_keys == (r.state.retiring_jwt[0].kid,)
    assert released_jwt_keys(current, at) == frozenset()
    # the same drop once prune_after passed: accepted (it is what the prune step writes)
    later = NOW + policy.jwt_retire
    assert released_jwt_keys(current, later) == {old_tp}
    assert judge_replacement(pub, current, parse_public_bundle(early), early, later).allowed
    # what the new state claims releases nothing: dropping the signing key stays refused
    signing_dropped = dict(current)
    signing_dropped[JWKS] = json.dumps(
        {"keys": [e for e in parse_jwks(current[JWKS]) if e["kid"] not in key_ids(early[JWKS])]}
    ).encode()
    assert not judge_replacement(
        pub, current, parse_public_bundle(signing_dropped), signing_dropped, later
    ).allowed


def test_the_public_part_carries_no_jwt_key_and_the_strict_reader_refuses_bad_records():
    cfg = Config(jwt_enabled=True)
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    r = rotate_jwt_key(bundle, codec.EMPTY, NOW, rotation_policy(cfg))
    items = r.items()
    public = json.loads(public_items(items)[ROTATION_STATE])
    assert (
        "key" not in public["jwt"]["prepared"]
        and public["jwt"]["prepared"]["kid"] == r.state.prepared_jwt.kid
    )
    doc = json.loads(items[ROTATION_STATE])
    # a prepared key that jwks.json does not publish
    unpublished = {**items, JWKS: bundle.jwks}
    with pytest.raises(BundleError, match="not published"):
        codec.parse_state(unpublished, parse_bundle(unpublished))
    # the signing key recorded as prepared
    doc2 = json.loads(json.dumps(doc))
    doc2["jwt"]["prepared"]["key"] = items["jwt.key"].decode()
    bad = {**items, ROTATION_STATE: json.dumps(doc2).encode()}
    with pytest.raises(BundleError, match="is the signing key"):
        codec.parse_state(bad, parse_bundle(bad))
    # an algorithm the key does not fit, a time without a zone
    for field, value, problem in (
        ("alg", "RS256", "RS256 needs"),
        ("since", "2026-06-01T12:00:00", "no time zone"),
    ):
        doc3 = json.loads(json.dumps(doc))
        doc3["jwt"]["prepared"][field] = value
        bad = {**items, ROTATION_STATE: json.dumps(doc3).encode()}
        with pytest.raises(BundleError, match=problem):
            codec.parse_state(bad, parse_bundle(bad))
    # the active record of the key in force keeps its time; thumbprints are RFC 7638, hex
    assert doc["jwt"]["active"]["thumbprint"] == thumbprint(bundle.jwt_key).hex()


def test_a_writer_with_longer_settings_neither_activates_nor_prunes_early():
    short = rotation_policy(Config(jwt_enabled=True, store_poll_interval=timedelta(seconds=30)))
    long = rotation_policy(Config(jwt_enabled=True, jwt_ttl=timedelta(hours=48)))  # no polling: 1h
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    r = rotate_jwt_key(bundle, codec.EMPTY, NOW, short)  # prepared by the short writer
    at = NOW + short.jwt_publish
    assert long.jwt_publish > short.jwt_publish
    assert advance(r.bundle, r.state, at, long) is None  # the long writer waits its own period
    a = advance(r.bundle, r.state, NOW + long.jwt_publish, long)
    assert [s.action for s in a.steps] == ["activate"]
    retiring = a.state.retiring_jwt[0]
    assert retiring.prune_after == NOW + long.jwt_publish + long.jwt_retire
    # a short writer later never prunes before the recorded prune_after
    assert advance(a.bundle, a.state, retiring.since + short.jwt_retire, short) is None


def test_x509_rotations_keep_the_jwt_key_and_its_rotation():
    from ca_core.rotation.actions import emergency_root, prepare_root

    cfg = Config(jwt_enabled=True, jwt_signing_algorithm=JwtAlgorithm.ES256)
    policy = rotation_policy(cfg)
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    r = rotate_jwt_key(bundle, codec.EMPTY, NOW, policy, at_once=True)
    for step in (prepare_root, emergency_root):
        x = step(r.bundle, r.state, NOW, policy)
        assert x.bundle.jwks == r.bundle.jwks and x.bundle.jwt_key is r.bundle.jwt_key
        assert x.state.retiring_jwt == r.state.retiring_jwt and x.state.jwt_since == NOW
        items = x.items()
        again = codec.parse_state(items, parse_bundle(items))
        assert again.retiring_jwt == r.state.retiring_jwt and again.jwt_since == NOW
