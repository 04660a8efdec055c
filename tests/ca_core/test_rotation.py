"""Root and issuer rotation without downtime (design §5, issue 6 item 5).

Injected clocks walk a root and an issuer through their whole lives; at every step every live
leaf (issued before or after a rotation step) verifies against the trust anchors every live
client holds (the anchors it received with its own certificate), with pyca/cryptography's X.509
verifier, and signing coverage never drops below 30 days while the automatic policy is on. Plus
the state document's rules, trust continuity, and the race of two replicas on one store.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from adapters.stores import FileBundleStore
from ca_core.bundle import (
    ROTATION_STATE,
    TrustBundle,
    certificates_pem,
    fingerprint,
    parse_bundle,
    parse_public_bundle,
)
from ca_core.certs import generate_issuer, generate_root, sign_workload
from ca_core.continuity import check_replacement
from ca_core.errors import BundleError, FailedPrecondition
from ca_core.expiry import expiry_report
from ca_core.rotation import actions, codec, document, rules
from ca_core.rotation.codec import parse_state
from ca_core.rotation.document import public_items
from ca_core.rotation.rules import advance
from ca_core.rotation.state import EMPTY, RotationPolicy
from ca_core.spiffe_id import SpiffeId
from ca_core.validators import Identity
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.pki import (
    CRAFTED_CLAIMS,
    NOW,
    bundle_with_issuer_window,
    crafted_items,
    make_bundle,
    make_key,
    verifies,
)
from support.wait import wait_until

DAY = timedelta(days=1)
STEP = timedelta(hours=12)
TTL = timedelta(hours=24)
SVID = SpiffeId("public", "prod", "orders")
CA_ID = SpiffeId("localhost", "default", "dapr-sentry")


class Clock:
    def __init__(self, t) -> None:
        self.t = t

    def __call__(self):
        return self.t


class Clients:
    """Workloads: each holds its leaf, the issuer chain it came with and the anchors it received."""

    def __init__(self) -> None:
        self.held: list[tuple[x509.Certificate, list[x509.Certificate], bytes]] = []

    def receive(self, chain_pem: bytes, anchors_pem: bytes) -> None:
        chain = x509.load_pem_x509_certificates(chain_pem)
        self.held.append((chain[0], chain[1:], anchors_pem))

    def check(self, now) -> int:
        """Drop expired leaves; every live leaf must verify against every live client's anchors."""
        self.held = [h for h in self.held if h[0].not_valid_after_utc > now]
        pairs = 0
        for leaf, chain, _ in self.held:
            for other_leaf, _, anchors in self.held:
                assert verifies(leaf, chain, anchors, now), (
                    f"at {now}: leaf from issuer {leaf.issuer.rfc4514_string()} does not verify against "
                    f"the anchors held by the client whose leaf is from {other_leaf.issuer.rfc4514_string()}"
                )
                pairs += 1
        return pairs


def public_coverage_days(store: FileBundleStore, now) -> float:
    """Coverage as the expiry function computes it: from the public part only."""
    stored = store.load_public()
    anchors = parse_public_bundle(stored.items).trust_anchors
    report = expiry_report(
        stored.items["ca.crt"],
        stored.items["issuer.crt"],
        now,
        prepared_not_after=document.prepared_not_after(stored.items.get(ROTATION_STATE), anchors),
    )
    return report.coverage_days


# --- the whole life of a root, through the running CA ------------------------------------------


def test_a_root_walked_through_its_life_by_the_automatic_policy(store_dir, caplog):
    """1-year root and issuer (the defaults), 12-hour steps for 400 days: the CA prepares a new
    root 30 days before the end, activates it 7 days before, prunes the old one once every leaf
    it covered has expired; no verification ever fails, coverage stays >= 30 days."""
    caplog.set_level(logging.INFO, logger="sentryca.audit")
    clock = Clock(NOW)
    ca = CertificateAuthority(clock=clock)
    ca.start(ca_config(store_dir, auto_rotate="true"))
    store = FileBundleStore(store_dir)
    key = make_key()
    clients = Clients()
    first_root = ca.signer.bundle.trust_anchors[0]
    anchors_seen: list[int] = []
    pairs = 0
    try:
        for n in range(int(400 * DAY / STEP)):
            clock.t = NOW + n * STEP
            ca.maintain()
            signed = ca.signer.issue(key.public_key(), Identity(SVID), clock.t)
            clients.receive(signed.chain_pem, signed.anchors_pem)
            pairs += clients.check(clock.t)
            coverage = ca.metrics.registry.get_sample_value("sentryca_signing_coverage_expiry_timestamp")
            assert coverage - clock.t.timestamp() >= 30 * 86400, f"coverage under 30 days at {clock.t}"
            assert public_coverage_days(store, clock.t) >= 30
            anchors_seen.append(len(ca.signer.bundle.trust_anchors))
        steps = {
            s: ca.metrics.registry.get_sample_value(
                "sentryca_rotation_steps_total", {"kind": "root", "step": s}
            )
            for s in ("prepare", "activate", "prune")
        }
        assert steps == {"prepare": 1.0, "activate": 1.0, "prune": 1.0}
        final = ca.signer.bundle
        assert first_root not in final.trust_anchors and len(final.trust_anchors) == 1
        assert final.issuer.not_valid_after_utc > NOW + 365 * DAY  # the new chain signs past the old root
        assert max(anchors_seen) == 2 and anchors_seen[0] == anchors_seen[-1] == 1
        assert pairs > 2000
        audit = [r for r in caplog.records if getattr(r, "event", None) == "rotation_step"]
        assert [(r.kind, r.step, r.trigger) for r in audit] == [
            ("root", "prepare", "auto"),
            ("root", "activate", "auto"),
            ("root", "prune", "auto"),
        ]
        assert ca.metrics.registry.get_sample_value("dapr_sentry_issuercert_changed_total") == 1.0
    finally:
        ca.stop(grace=0)


def test_without_the_automatic_policy_coverage_runs_out(store_dir):
    """The walk above can fail: with the policy off nothing is prepared and coverage drops."""
    clock = Clock(NOW)
    ca = CertificateAuthority(clock=clock)
    ca.start(ca_config(store_dir))
    try:
        clock.t = NOW + 340 * DAY
        ca.maintain()
        coverage = ca.metrics.registry.get_sample_value("sentryca_signing_coverage_expiry_timestamp")
        assert coverage - clock.t.timestamp() < 30 * 86400
        assert len(ca.signer.bundle.trust_anchors) == 1
    finally:
        ca.stop(grace=0)


# --- the whole life of an issuer under a long-lived root (pure core) --------------------------------


def bundle_with_lifetimes(root_days: int, issuer_days: int) -> TrustBundle:
    root_key, issuer_key = make_key(), make_key()
    root = generate_root("localhost", root_key, NOW, lifetime=root_days * DAY, backdate=timedelta(0))
    issuer = generate_issuer(
        root, root_key, issuer_key, CA_ID, NOW, lifetime=issuer_days * DAY, backdate=timedelta(0)
    )
    return TrustBundle((root,), (issuer,), issuer_key, root_key)


def test_an_issuer_walked_through_its_life_under_a_three_year_root():
    """Root 3 years, issuer 90 days (e.g. an imported CA with its root key): the issuer is
    prepared 30 days and activated 7 days before it ends, again and again; the root never changes."""
    bundle = bundle_with_lifetimes(3 * 365, 90)
    items = bundle.to_items()
    policy = RotationPolicy(auto=True, issuer_lifetime=90 * DAY)
    clients = Clients()
    key = make_key()
    taken: Counter = Counter()
    for n in range(int(215 * DAY / STEP)):
        now = NOW + n * STEP
        bundle = parse_bundle(items)
        result = advance(bundle, parse_state(items, bundle), now, policy)
        if result is not None:
            items = result.items()
            bundle = parse_bundle(items)  # what the store hands back
            taken.update((s.kind, s.action) for s in result.steps)
        leaf = sign_workload(bundle.issuer, bundle.issuer_key, key.public_key(), SVID, now, ttl=TTL)
        clients.receive(certificates_pem([leaf]) + bundle.issuer_chain_pem, bundle.anchors_pem)
        clients.check(now)
        report = expiry_report(
            public_items(items)["ca.crt"],
            public_items(items)["issuer.crt"],
            now,
            prepared_not_after=document.prepared_not_after(
                public_items(items).get(ROTATION_STATE), bundle.trust_anchors
            ),
        )
        assert report.coverage_days >= 30, f"coverage {report.coverage_days:.1f} days at {now}"
    assert taken == {("issuer", "prepare"): 3, ("issuer", "activate"): 3}
    assert len(bundle.trust_anchors) == 1


# --- rules of the state machine ----------------------------------------------------------------


def test_prepare_and_activate_thresholds_follow_the_lifetime():
    """A 60-day root: prepare at min(30, 30) days left, activate at min(10, 7) days left."""
    bundle = bundle_with_lifetimes(60, 60)
    end = bundle.trust_anchors[0].not_valid_after_utc
    policy = RotationPolicy(auto=True, propagation_window=DAY)
    assert advance(bundle, EMPTY, end - 30 * DAY - timedelta(minutes=1), policy) is None
    prepared = advance(bundle, EMPTY, end - 30 * DAY, policy)
    assert [s.action for s in prepared.steps] == ["prepare"]
    state = prepared.state
    assert state.prepared_root.activate_after == end - 7 * DAY
    assert advance(prepared.bundle, state, end - 7 * DAY - timedelta(minutes=1), policy) is None
    activated = advance(prepared.bundle, state, end - 7 * DAY, policy)
    assert [s.action for s in activated.steps] == ["activate"]
    # A 6-day root: min(3, 30) and min(1, 7) days.
    short = bundle_with_lifetimes(6, 6)
    end = short.trust_anchors[0].not_valid_after_utc
    assert advance(short, EMPTY, end - 3 * DAY - timedelta(minutes=1), policy) is None
    assert advance(short, EMPTY, end - 3 * DAY, policy).state.prepared_root is not None


def test_a_manual_root_rotation_waits_for_the_window_and_prunes_after_the_leaves():
    bundle = make_bundle(NOW)
    policy = RotationPolicy(propagation_window=2 * DAY, leaf_bound=TTL + timedelta(minutes=15))
    prepared = actions.prepare_root(bundle, EMPTY, NOW, policy)
    assert len(prepared.bundle.trust_anchors) == 2 and prepared.bundle.issuer == bundle.issuer
    assert advance(prepared.bundle, prepared.state, NOW + 2 * DAY - timedelta(seconds=1), policy) is None
    activated = advance(prepared.bundle, prepared.state, NOW + 2 * DAY, policy)
    assert [s.action for s in activated.steps] == ["activate"]
    assert activated.bundle.issuer == prepared.state.prepared_root.issuer_chain[0]
    assert activated.bundle.root_key is prepared.state.prepared_root.root_key
    (retiring,) = activated.state.retiring
    assert retiring.sha256 == fingerprint(bundle.trust_anchors[0])
    assert retiring.prune_after == NOW + 2 * DAY + TTL + timedelta(minutes=15)
    assert (
        advance(activated.bundle, activated.state, retiring.prune_after - timedelta(seconds=1), policy)
        is None
    )
    pruned = advance(activated.bundle, activated.state, retiring.prune_after, policy)
    assert [s.action for s in pruned.steps] == ["prune"]
    assert pruned.bundle.trust_anchors == (prepared.state.prepared_root.root,)
    assert [r.reason for r in pruned.state.removed] == ["pruned"]
    with pytest.raises(FailedPrecondition, match="already prepared"):
        actions.prepare_root(prepared.bundle, prepared.state, NOW, policy)


def test_the_longest_leaf_bound_any_writer_used_keeps_the_old_root():
    """A CA with a long TTL prepared the rotation; the CLI, with shorter settings, activates it:
    the old root stays for the CA's bound. A writer with a still longer bound pushes it later."""
    bundle = make_bundle(NOW)
    serving = RotationPolicy(propagation_window=timedelta(0), leaf_bound=2 * DAY)
    cli = RotationPolicy(propagation_window=timedelta(0), leaf_bound=DAY)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, serving)
    assert prepared.state.leaf_bound == 2 * DAY
    items = prepared.items()
    assert json.loads(items[ROTATION_STATE])["root"]["leaf_bound_seconds"] == 2 * 86400
    state = parse_state(items, prepared.bundle)
    assert state.leaf_bound == 2 * DAY
    activated = advance(prepared.bundle, state, NOW + timedelta(hours=1), cli)
    assert [s.action for s in activated.steps] == ["activate"]
    (retiring,) = activated.state.retiring
    assert retiring.prune_after == NOW + timedelta(hours=1) + 2 * DAY
    assert advance(activated.bundle, activated.state, NOW + 2 * DAY, cli) is None
    longer = RotationPolicy(leaf_bound=3 * DAY)
    pushed = advance(activated.bundle, activated.state, NOW + 2 * DAY, longer)
    assert [s.action for s in pushed.steps] == ["bound"]
    (retiring,) = pushed.state.retiring
    assert retiring.prune_after == NOW + timedelta(hours=1) + 3 * DAY and pushed.state.leaf_bound == 3 * DAY
    assert advance(pushed.bundle, pushed.state, NOW + 2 * DAY, longer) is None  # recorded once
    assert advance(pushed.bundle, pushed.state, NOW + 2 * DAY, cli) is None  # shorter: nothing to do


def test_next_step_due_is_the_earliest_scheduled_step():
    bundle = make_bundle(NOW)
    root_end = bundle.trust_anchors[0].not_valid_after_utc
    assert rules.next_step_due(bundle, EMPTY, RotationPolicy()) is None
    at, what = rules.next_step_due(bundle, EMPTY, RotationPolicy(auto=True))
    assert at == root_end - 30 * DAY and "preparation of a new root" in what
    assert advance(bundle, EMPTY, at, RotationPolicy(auto=True)).steps[0].action == "prepare"
    policy = RotationPolicy(propagation_window=DAY, leaf_bound=TTL)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, policy)
    at, what = rules.next_step_due(prepared.bundle, prepared.state, policy)
    assert at == NOW + DAY and "activation of the prepared root" in what
    activated = advance(prepared.bundle, prepared.state, at, policy)
    at, what = rules.next_step_due(activated.bundle, activated.state, policy)
    assert at == NOW + DAY + TTL and "removal of the retiring root" in what
    assert advance(activated.bundle, activated.state, at, policy).steps[0].action == "prune"


def test_an_expired_active_chain_activates_the_prepared_root_at_once():
    bundle = bundle_with_lifetimes(10, 10)
    policy = RotationPolicy(propagation_window=30 * DAY)
    prepared = actions.prepare_root(bundle, EMPTY, NOW + 9 * DAY, policy)
    after_expiry = NOW + 10 * DAY + timedelta(minutes=1)
    result = advance(prepared.bundle, prepared.state, after_expiry, policy)
    assert [s.action for s in result.steps] == ["activate", "prune"]  # the old chain covers nothing
    assert "early" in result.steps[0].message


def test_the_automatic_policy_leaves_a_root_without_its_key_alone():
    bundle = bundle_with_lifetimes(60, 60)
    keyless = TrustBundle(bundle.trust_anchors, bundle.issuer_chain, bundle.issuer_key, None)
    end = bundle.trust_anchors[0].not_valid_after_utc
    assert advance(keyless, EMPTY, end - 10 * DAY, RotationPolicy(auto=True)) is None
    assert advance(bundle, EMPTY, end - 10 * DAY, RotationPolicy(auto=True)) is not None


def test_rotate_issuer_needs_the_root_key_or_a_supplied_issuer_under_the_active_root():
    bundle = make_bundle(NOW)
    keyless = TrustBundle(bundle.trust_anchors, bundle.issuer_chain, bundle.issuer_key, None)
    policy = RotationPolicy()
    with pytest.raises(FailedPrecondition, match="does not hold the active root's key"):
        actions.rotate_issuer(keyless, EMPTY, NOW, policy)
    new_key = make_key()
    good = generate_issuer(bundle.trust_anchors[0], bundle.root_key, new_key, CA_ID, NOW)
    result = actions.rotate_issuer(keyless, EMPTY, NOW, policy, ((good,), new_key))
    assert result.bundle.issuer == good and result.bundle.root_key is None
    other = make_bundle(NOW)
    foreign = generate_issuer(other.trust_anchors[0], other.root_key, new_key, CA_ID, NOW)
    with pytest.raises(FailedPrecondition, match="does not verify to the active root"):
        actions.rotate_issuer(keyless, EMPTY, NOW, policy, ((foreign,), new_key))
    with pytest.raises(FailedPrecondition, match="key does not match"):
        actions.rotate_issuer(keyless, EMPTY, NOW, policy, ((good,), make_key()))
    with pytest.raises(FailedPrecondition, match="not valid now"):
        actions.rotate_issuer(keyless, EMPTY, NOW + 400 * DAY, policy, ((good,), new_key))


def test_emergency_removes_every_other_root_and_continuity_accepts_only_that():
    bundle = make_bundle(NOW)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy())
    result = actions.emergency_root(prepared.bundle, prepared.state, NOW, RotationPolicy())
    assert len(result.bundle.trust_anchors) == 1
    assert result.bundle.trust_anchors[0] not in prepared.bundle.trust_anchors
    assert result.state.prepared_root is None
    items = result.items()
    released = document.released_roots(prepared.items(), items, NOW)
    assert released == {fingerprint(a) for a in prepared.bundle.trust_anchors}
    check_replacement(bundle, prepared.items(), result.bundle, items, NOW, "test")
    with pytest.raises(BundleError, match="does not include the active root"):
        # without its rotation state
        check_replacement(bundle, prepared.items(), result.bundle, result.bundle.to_items(), NOW, "test")
    with pytest.raises(BundleError, match="does not include the active root"):
        other = make_bundle(NOW)  # released lists only the emergency's own roots, not this one
        check_replacement(bundle, prepared.items(), other, other.to_items(), NOW, "test")


@pytest.mark.parametrize("reason, active_since", CRAFTED_CLAIMS)
def test_continuity_ignores_what_an_unrelated_bundle_claims_about_the_current_root(reason, active_since):
    bundle = make_bundle(NOW)
    crafted = crafted_items(bundle, NOW, reason, active_since)
    assert document.released_roots(bundle.to_items(), crafted, NOW) == frozenset()
    with pytest.raises(BundleError, match="does not include the active root"):
        check_replacement(bundle, bundle.to_items(), parse_bundle(crafted), crafted, NOW, "test")


def test_continuity_releases_roots_by_the_current_state_expiry_or_a_recorded_emergency():
    policy = RotationPolicy(propagation_window=timedelta(0), leaf_bound=TTL)
    bundle = make_bundle(NOW)
    old_fp = fingerprint(bundle.trust_anchors[0])
    activated = rules.advance(*_prepared(bundle, policy), NOW, policy)
    (retiring,) = activated.state.retiring
    assert retiring.sha256 == old_fp
    # pruning: only the CURRENT state's schedule counts, and only once prune_after has passed
    pruned = rules.advance(activated.bundle, activated.state, retiring.prune_after, policy)
    assert [s.action for s in pruned.steps] == ["prune"]
    assert old_fp in document.released_roots(activated.items(), pruned.items(), retiring.prune_after)
    assert old_fp not in document.released_roots(activated.items(), pruned.items(), NOW)
    assert old_fp not in document.released_roots(bundle.to_items(), pruned.items(), retiring.prune_after)
    # expiry: a root that has expired covers nothing
    after = bundle.trust_anchors[0].not_valid_after_utc
    assert old_fp in document.released_roots(bundle.to_items(), make_bundle(after).to_items(), after)
    # emergency: recorded together with the new active root
    emergency = actions.emergency_root(bundle, EMPTY, NOW, policy)
    assert old_fp in document.released_roots(bundle.to_items(), emergency.items(), NOW)
    later = actions.rotate_issuer(emergency.bundle, emergency.state, NOW + DAY, policy)
    assert old_fp in document.released_roots(bundle.to_items(), later.items(), NOW + DAY)


def _prepared(bundle: TrustBundle, policy: RotationPolicy):
    prepared = actions.prepare_root(bundle, EMPTY, NOW, policy)
    return prepared.bundle, prepared.state


def test_a_polling_ca_refuses_an_unrelated_bundle_claiming_its_root_was_removed(store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, store_poll_interval="1s"))
    try:
        first = ca.signer.bundle
        store = FileBundleStore(store_dir)
        for n, (reason, active_since) in enumerate(CRAFTED_CLAIMS, 1):
            crafted = crafted_items(first, datetime.now(UTC), reason, active_since)
            assert store.replace(crafted, store.load().version)
            wait_until(lambda n=n: refused(ca) == n, f"the crafted bundle ({reason}) is refused")
            assert ca.signer.bundle is first
    finally:
        ca.stop(grace=0)


def test_a_ca_whose_issuer_expired_serves_the_early_activation_and_pruning_it_wrote(store_dir):
    """The active chain expired (the root did not): advance activates the prepared root early
    and prunes the old one in the same write; the CA's own restart must accept that bundle (the
    new active root is the one its state prepared, and the old chain covers no valid leaf)."""
    bundle = bundle_with_issuer_window(NOW - 100 * DAY, NOW + DAY, NOW)
    policy = RotationPolicy(propagation_window=30 * DAY)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, policy)
    assert FileBundleStore(store_dir).create(prepared.items())
    ca = CertificateAuthority(clock=Clock(NOW + 3 * DAY))
    ca.start(ca_config(store_dir))
    try:
        assert ca.rotate_if_due()
        assert refused(ca) == 0
        served = ca.signer.bundle
        assert served.trust_anchors == (prepared.state.prepared_root.root,)
        assert served.issuer == prepared.state.prepared_root.issuer_chain[0]
        # an unrelated bundle still is not accepted in the same situation
        assert document.released_roots(prepared.items(), make_bundle(NOW).to_items(), NOW + 3 * DAY) == set()
    finally:
        ca.stop(grace=0)


def refused(ca: CertificateAuthority) -> float:
    return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0


def test_the_state_round_trips_and_its_public_part_has_no_key():
    bundle = make_bundle(NOW)
    prepared = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy())
    items = prepared.items()
    again = parse_state(items, parse_bundle(items))
    assert codec.encode_state(again, parse_bundle(items)) == items[ROTATION_STATE]
    public = public_items(items)
    assert set(public) == {"ca.crt", "issuer.crt", ROTATION_STATE}
    assert b"PRIVATE KEY" not in public[ROTATION_STATE] and b"PRIVATE KEY" in items[ROTATION_STATE]
    assert json.loads(public[ROTATION_STATE])["root"]["prepared"]["activate_after"]
    (end,) = document.prepared_not_after(public[ROTATION_STATE], prepared.bundle.trust_anchors)
    assert end == prepared.state.prepared_root.not_after
    assert (
        document.prepared_not_after(public[ROTATION_STATE], bundle.trust_anchors) == ()
    )  # root not anchored


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: d | {"format": 2}, "format 2"),
        (
            lambda d: {**d, "root": {**d["root"], "prepared": {**d["root"]["prepared"], "sha256": "00"}}},
            "not among",
        ),
        (
            lambda d: {**d, "root": {**d["root"], "prepared": {**d["root"]["prepared"], "issuer_key": "x"}}},
            "issuer_key",
        ),
        (
            lambda d: {
                **d,
                "root": {
                    **d["root"],
                    "prepared": {**d["root"]["prepared"], "not_after": "2099-01-01T00:00:00+00:00"},
                },
            },
            "not_after does not match",
        ),
        (
            lambda d: {
                **d,
                "root": {**d["root"], "prepared": {**d["root"]["prepared"], "since": "yesterday"}},
            },
            "ISO 8601",
        ),
    ],
)
def test_a_damaged_state_is_refused_naming_the_problem(damage, words, store_dir):
    bundle = make_bundle(NOW)
    items = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy()).items()
    items[ROTATION_STATE] = json.dumps(damage(json.loads(items[ROTATION_STATE]))).encode()
    with pytest.raises(BundleError, match=words):
        parse_state(items, parse_bundle(items))
    # the CA refuses to start on it, and changes nothing
    assert FileBundleStore(store_dir).create(items)
    before = FileBundleStore(store_dir).load()
    with pytest.raises(BundleError, match=r"rotation\.json"):
        CertificateAuthority().start(ca_config(store_dir))
    assert FileBundleStore(store_dir).load() == before


# --- several replicas on one store ------------------------------------------------------------


def test_two_replicas_due_at_once_make_exactly_one_rotation(store_dir):
    clock = Clock(NOW)
    replicas = [CertificateAuthority(clock=clock), CertificateAuthority(clock=clock)]
    for ca in replicas:
        ca.start(ca_config(store_dir, auto_rotate="true"))
    try:
        assert replicas[0].signer.bundle.public == replicas[1].signer.bundle.public
        clock.t = NOW + 340 * DAY  # 25 days left: both find a root rotation due
        barrier = threading.Barrier(2)
        wrote: list[bool] = []

        def step(ca: CertificateAuthority) -> None:
            barrier.wait()
            wrote.append(ca.rotate_if_due())

        threads = [threading.Thread(target=step, args=(ca,)) for ca in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(wrote) == [False, True]
        counted = sum(
            ca.metrics.registry.get_sample_value(
                "sentryca_rotation_steps_total", {"kind": "root", "step": "prepare"}
            )
            or 0
            for ca in replicas
        )
        assert counted == 1
        stored = FileBundleStore(store_dir).load()
        assert len(parse_bundle(stored.items).trust_anchors) == 2
        assert (
            replicas[0].signer.bundle.public
            == replicas[1].signer.bundle.public
            == parse_bundle(stored.items).public
        )
        assert not any(ca.rotate_if_due() for ca in replicas)  # nothing more is due
    finally:
        for ca in replicas:
            ca.stop(grace=0)
