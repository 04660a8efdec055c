"""A root key held outside the process (design §5.18) in the pure core: the bundle stores its
reference (``root.kms``), never key material; parsing opens the reference with the opener it is
given; the automatic policy rotates issuers under such a root but leaves the root to the
operator; a prepared root's key is kept by reference in ``rotation.json``. The key here is a
:class:`~ca_core.keys.RemoteKey` signing with a real key the bundle never sees (the KMS adapter
itself is tested against moto in ``tests/e2e/test_kms.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca_core.bundle import ROOT_KEY, ROOT_KEY_REF, ROTATION_STATE, generate_bundle, parse_bundle
from ca_core.errors import BundleError
from ca_core.keys import key_uri_of, private_key_pem
from ca_core.rotation import actions, rules
from ca_core.rotation.codec import parse_state
from ca_core.rotation.state import EMPTY, Rotation, RotationPolicy
from ca_core.spiffe_id import SpiffeId

from support.remote_key import ElsewhereKey, opener

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CA_ID = SpiffeId("localhost", "default", "dapr-sentry")


def test_a_remote_root_key_is_stored_as_its_reference_and_signs_the_root():
    key = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/one")
    bundle = generate_bundle("localhost", CA_ID, NOW, root_key=key)
    assert key.signed == 2  # the self-signed root and the issuer
    bundle.trust_anchors[0].verify_directly_issued_by(bundle.trust_anchors[0])
    items = bundle.to_items()
    assert ROOT_KEY not in items and items[ROOT_KEY_REF] == (key.key_uri + "\n").encode()
    assert not any(key.secret() in v for v in items.values())
    assert key_uri_of(key) == key.key_uri and key_uri_of(bundle.issuer_key) is None
    with pytest.raises(ValueError, match="cannot be written as PEM"):
        private_key_pem(key)


def test_parse_opens_the_reference_with_its_opener_or_keeps_it():
    key = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/one")
    items = generate_bundle("localhost", CA_ID, NOW, root_key=key).to_items()
    kept = parse_bundle(items)
    assert kept.root_key is None and kept.root_key_uri == key.key_uri
    assert kept.to_items()[ROOT_KEY_REF] == items[ROOT_KEY_REF]  # round-trips unopened
    assert parse_bundle(items, open_key=opener(key)).root_key is key
    other = ElsewhereKey(key.key_uri)
    with pytest.raises(BundleError, match=r"root\.kms.*does not match any trust anchor"):
        parse_bundle(items, open_key=opener(other))


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({ROOT_KEY: b"x"}, "a root key is either held"),
        ({ROOT_KEY_REF: b"arn:aws:kms:us-east-1:111122223333:key/one"}, "one line, kms://"),
        ({ROOT_KEY_REF: b"kms://a b"}, "one line, kms://"),
        ({ROOT_KEY_REF: b"kms://\xff"}, "not an ASCII key reference"),
    ],
)
def test_a_malformed_or_doubled_root_reference_is_refused(extra, problem):
    key = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/one")
    items = generate_bundle("localhost", CA_ID, NOW, root_key=key).to_items() | extra
    with pytest.raises(BundleError, match=problem):
        parse_bundle(items, open_key=opener(key))


def test_the_automatic_policy_rotates_issuers_under_a_remote_root_but_not_the_root():
    key = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/one")
    policy = RotationPolicy(auto=True, root_lifetime=timedelta(days=30), issuer_lifetime=timedelta(days=2))
    bundle = generate_bundle(
        "localhost",
        CA_ID,
        NOW,
        root_key=key,
        root_lifetime=timedelta(days=30),
        issuer_lifetime=timedelta(days=2),
    )
    state, now, issuers = EMPTY, NOW, set()
    signed = key.signed
    while now < NOW + timedelta(days=29):
        result = rules.advance(bundle, state, now, policy)
        if result is not None:
            assert not any(s.kind == "root" and s.action == "prepare" for s in result.steps), result.steps
            bundle, state = result.bundle, result.state
            assert bundle.root_key is key and ROOT_KEY not in Rotation(bundle, state, ()).items()
        issuers.add(bundle.issuer.serial_number)
        now += timedelta(hours=4)
    assert len(issuers) > 10 and key.signed - signed >= len(issuers) - 1  # each new issuer signed by it
    due = rules.next_step_due(bundle, state, policy)
    assert due is None or "new root" not in due[1]


def test_a_prepared_remote_root_is_kept_by_reference_in_the_rotation_state():
    old = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/old")
    new = ElsewhereKey("kms://arn:aws:kms:us-east-1:111122223333:key/new")
    bundle = generate_bundle("localhost", CA_ID, NOW, root_key=old)
    result = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy(), root_key=new)
    items = result.items()
    assert f'"key_uri": "{new.key_uri}"'.encode() in items[ROTATION_STATE]
    assert not any(k.secret() in v for k in (old, new) for v in items.values())
    parsed = parse_bundle(items, open_key=opener(old, new))
    state = parse_state(items, parsed, open_key=opener(old, new))
    assert state.prepared_root is not None and state.prepared_root.root_key is new
    with pytest.raises(BundleError, match="opening it needs KMS access"):
        parse_state(items, parsed)
    active = rules.advance(parsed, state, NOW + timedelta(days=2), RotationPolicy())
    assert active is not None and active.bundle.root_key is new
    assert active.bundle.to_items()[ROOT_KEY_REF] == (new.key_uri + "\n").encode()
