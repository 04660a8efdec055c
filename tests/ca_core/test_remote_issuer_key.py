"""An issuer key held outside the process (design §5.18) in the pure core: the bundle stores its
reference (``issuer.kms``), never key material, and parsing needs the opener; every leaf is signed
by it; issuer rotations (automatic, at a root's activation, with a new root) certify the same key
again, ``rotate issuer`` certifies another key or a fresh local one; a prepared issuer's key is
kept by reference in ``rotation.json``. The key is the :class:`ElsewhereKey` of the root-key tests
(a real key the bundle never sees); the KMS adapter is tested against moto in
``tests/e2e/test_kms_issuer.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ca_core.bundle import ISSUER_KEY, ISSUER_KEY_REF, ROTATION_STATE, generate_bundle, parse_bundle
from ca_core.certs import sign_workload
from ca_core.errors import BundleError
from ca_core.keys import key_uri_of, public_key_der
from ca_core.rotation import actions, rules
from ca_core.rotation.codec import parse_state
from ca_core.rotation.state import EMPTY, Rotation, RotationPolicy
from ca_core.service import Signer, SigningPolicy
from ca_core.spiffe_id import SpiffeId

from support.pki import make_key
from support.remote_key import ElsewhereKey, opener

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CA_ID = SpiffeId("localhost", "default", "dapr-sentry")

ARN = "kms://arn:aws:kms:us-east-1:111122223333:key/"


def same_key(cert: x509.Certificate, key: ElsewhereKey) -> bool:
    return public_key_der(cert.public_key()) == public_key_der(key.public_key())


def test_a_remote_issuer_key_is_stored_as_its_reference_and_signs_every_leaf():
    key = ElsewhereKey(ARN + "issuer")
    bundle = generate_bundle("localhost", CA_ID, NOW, issuer_key=key)
    assert same_key(bundle.issuer, key) and bundle.issuer_key_uri == key.key_uri
    items = bundle.to_items()
    assert ISSUER_KEY not in items and items[ISSUER_KEY_REF] == (key.key_uri + "\n").encode()
    assert not any(key.secret() in v for v in items.values())
    parsed = parse_bundle(items, open_key=opener(key))
    assert parsed.issuer_key is key and parsed.to_items() == items
    before = key.signed
    leaf = sign_workload(parsed.issuer, parsed.issuer_key, make_key().public_key(), "spiffe://x/ns/a/b", NOW)
    leaf.verify_directly_issued_by(parsed.issuer)
    assert key.signed == before + 1
    signer = Signer(parsed, SigningPolicy(trust_domain="localhost"))
    assert signer.issuer_key_uri == key.key_uri
    assert Signer(generate_bundle("localhost", CA_ID, NOW), SigningPolicy()).issuer_key_uri is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda items: items, r"issuer\.kms.*names the issuer key kms://.*opening it needs KMS"),
        (lambda items: items | {ISSUER_KEY: b"x"}, "an issuer key is either held"),
        (lambda items: items | {ISSUER_KEY_REF: b"kms://a b"}, "one line, kms://"),
        (lambda items: {k: v for k, v in items.items() if k != ISSUER_KEY_REF}, r"missing issuer\.key"),
    ],
)
def test_an_issuer_reference_unopened_doubled_malformed_or_missing_is_refused(change, problem):
    key = ElsewhereKey(ARN + "issuer")
    items = change(generate_bundle("localhost", CA_ID, NOW, issuer_key=key).to_items())
    with pytest.raises(BundleError, match=problem):
        parse_bundle(items, open_key=None if problem.startswith("issuer") else opener(key))


def test_an_issuer_reference_opened_to_another_key_is_refused():
    key = ElsewhereKey(ARN + "issuer")
    items = generate_bundle("localhost", CA_ID, NOW, issuer_key=key).to_items()
    with pytest.raises(BundleError, match=r"issuer\.kms.*does not match the public key of the issuer"):
        parse_bundle(items, open_key=opener(ElsewhereKey(key.key_uri)))


def test_automatic_issuer_rotation_certifies_the_same_remote_key_again():
    key = ElsewhereKey(ARN + "issuer")
    policy = RotationPolicy(auto=True, root_lifetime=timedelta(days=30), issuer_lifetime=timedelta(days=2))
    bundle = generate_bundle(
        "localhost",
        CA_ID,
        NOW,
        issuer_key=key,
        root_lifetime=timedelta(days=30),
        issuer_lifetime=timedelta(days=2),
    )
    state, now, issuers, prepared_seen = EMPTY, NOW, set(), False
    while now < NOW + timedelta(days=20):
        result = rules.advance(bundle, state, now, policy)
        if result is not None:
            items = result.items()
            assert ISSUER_KEY not in items and not any(key.secret() in v for v in items.values())
            if state_prepared := result.state.prepared_issuer:
                prepared_seen = True
                assert f'"issuer_key_uri": "{key.key_uri}"'.encode() in items[ROTATION_STATE]
                assert state_prepared.issuer_key is key
                with pytest.raises(BundleError, match="prepared issuer's key is kms://"):
                    parse_state(items, parse_bundle(items, open_key=opener(key)))
            bundle = parse_bundle(items, open_key=opener(key))
            state = parse_state(items, bundle, open_key=opener(key))
        assert bundle.issuer_key is key and same_key(bundle.issuer, key)
        issuers.add(bundle.issuer.serial_number)
        now += timedelta(hours=4)
    assert prepared_seen and len(issuers) > 5


def test_rotate_issuer_keeps_the_remote_key_or_takes_another_or_a_fresh_local_one():
    key, other = ElsewhereKey(ARN + "issuer"), ElsewhereKey(ARN + "other")
    bundle = generate_bundle("localhost", CA_ID, NOW, issuer_key=key)
    policy = RotationPolicy()
    kept = actions.rotate_issuer(bundle, EMPTY, NOW, policy)
    assert kept.bundle.issuer_key is key and kept.bundle.issuer != bundle.issuer
    moved = actions.rotate_issuer(kept.bundle, kept.state, NOW, policy, issuer_key=other)
    assert moved.bundle.issuer_key is other and same_key(moved.bundle.issuer, other)
    assert moved.items()[ISSUER_KEY_REF] == (other.key_uri + "\n").encode()
    local = actions.rotate_issuer(moved.bundle, moved.state, NOW, policy, fresh_key=True)
    assert key_uri_of(local.bundle.issuer_key) is None
    items = local.items()
    assert ISSUER_KEY in items and ISSUER_KEY_REF not in items
    parse_bundle(items)  # a local issuer key needs no opener


def test_a_new_root_certifies_the_remote_issuer_key_again():
    key = ElsewhereKey(ARN + "issuer")
    bundle = generate_bundle("localhost", CA_ID, NOW, issuer_key=key)
    result = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy())
    items = result.items()
    assert f'"issuer_key_uri": "{key.key_uri}"'.encode() in items[ROTATION_STATE]
    parsed = parse_bundle(items, open_key=opener(key))
    state = parse_state(items, parsed, open_key=opener(key))
    assert state.prepared_root is not None and state.prepared_root.issuer_key is key
    active = rules.advance(parsed, state, NOW + timedelta(days=2), RotationPolicy())
    assert active is not None and active.bundle.issuer_key is key
    assert active.bundle.anchor_for(active.bundle.issuer) == state.prepared_root.root
    emergency = actions.emergency_root(parsed, state, NOW, RotationPolicy())
    assert emergency.bundle.issuer_key is key and isinstance(emergency, Rotation)
