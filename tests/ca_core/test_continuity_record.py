"""The continuity rule against a store's record of the last accepted bundle (design §5.4): what
a start and the config-change function apply. Pure: real certificates, no store."""

from __future__ import annotations

import itertools
from datetime import timedelta

from ca_core.bundle import parse_bundle
from ca_core.continuity import judge_against_record, matches_record, refusal_message
from ca_core.rotation import actions, rules
from ca_core.rotation.document import public_items
from ca_core.rotation.state import EMPTY, RotationPolicy

from support.pki import CRAFTED_CLAIMS, NOW, crafted_items, make_bundle, reissued


def judge(record_items, new_items):
    return judge_against_record(record_items, parse_bundle(new_items), new_items, NOW)


def test_no_record_or_the_records_own_bundle_is_allowed():
    bundle = make_bundle(NOW)
    assert judge(None, make_bundle(NOW).to_items()).allowed
    assert judge({}, make_bundle(NOW).to_items()).allowed
    record = public_items(bundle.to_items())
    assert matches_record(record, bundle.to_items())
    assert judge(record, bundle.to_items()).allowed


def test_a_bundle_dropping_the_recorded_root_is_refused_one_keeping_it_is_allowed():
    bundle = make_bundle(NOW)
    record = public_items(bundle.to_items())
    other = make_bundle(NOW)
    verdict = judge(record, other.to_items())
    assert not verdict.allowed and verdict.dropped_root == bundle.trust_anchors[0]
    assert "does not include the active root" in refusal_message(verdict, "s3://b/k")
    assert "s3://b/k" in refusal_message(verdict, "s3://b/k")
    assert judge(record, reissued(bundle, NOW).to_items()).allowed
    assert not matches_record(record, reissued(bundle, NOW).to_items())


def test_a_record_that_cannot_be_parsed_judges_nothing():
    record = {"ca.crt": b"not a certificate", "issuer.crt": b"nor this"}
    assert judge(record, make_bundle(NOW).to_items()).allowed


def test_the_records_public_rotation_state_releases_roots_as_the_full_one_does():
    """Rotation steps judged against the record (public rotation.json, without keys) are allowed;
    a record that never saw the schedule, and an unrelated bundle claiming the root's
    removal, are refused."""
    bundle = make_bundle(NOW)
    policy = RotationPolicy(propagation_window=timedelta(0), leaf_bound=timedelta(hours=1))
    prepared = actions.prepare_root(bundle, EMPTY, NOW, policy)
    activated = rules.advance(prepared.bundle, prepared.state, NOW, policy)
    pruned = rules.advance(activated.bundle, activated.state, NOW + timedelta(hours=2), policy)
    assert [s.action for s in pruned.steps] == ["prune"]
    steps = [bundle.to_items(), prepared.items(), activated.items(), pruned.items()]
    for before, after in itertools.pairwise(steps):
        record = public_items(before)
        assert b"PRIVATE KEY" not in record.get("rotation.json", b"")
        verdict = judge_against_record(record, parse_bundle(after), after, NOW + timedelta(hours=2))
        assert verdict.allowed
    # A record that never saw the schedule (the bundle before the rotation) does not release the
    # root the pruned bundle's own state claims it removed.
    record = public_items(bundle.to_items())
    later = NOW + timedelta(hours=2)
    assert not judge_against_record(record, parse_bundle(pruned.items()), pruned.items(), later).allowed
    for reason, active_since in CRAFTED_CLAIMS:
        crafted = crafted_items(bundle, NOW, reason, active_since)
        assert not judge(public_items(bundle.to_items()), crafted).allowed, reason
