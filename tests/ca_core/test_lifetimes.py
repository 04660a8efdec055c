"""Root and issuer lifetimes (issue 16, item 4): ``--root-ttl``/``--issuer-ttl`` and their
validation, the lifetime a rotation keeps when they are unset, the rotation thresholds at short
lifetimes (the real rules, real certificates, time stepped as a CA's expiry checks step it), and
the warnings a production CA gives."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from ca_core import policy
from ca_core.bundle_settings import lifetimes, settings_of, validity
from ca_core.certs import sign_workload
from ca_core.config import load_config
from ca_core.errors import ConfigError
from ca_core.expiry import stored_expiry_report
from ca_core.rotation import actions, codec, rules
from ca_core.rotation.state import EMPTY, margins

from support.pki import NOW, make_bundle, make_key, verifies

H, D = timedelta(hours=1), timedelta(days=1)
SKEW = timedelta(minutes=15)


def cfg(**flags: str):
    return load_config(flags, {})


# --- the options -------------------------------------------------------------------------------


def test_the_options_are_flags_and_variables_and_unset_by_default():
    assert (cfg().root_ttl, cfg().issuer_ttl) == (None, None)
    c = load_config({"issuer_ttl": "24h"}, {"SENTRY_ROOT_TTL": "168h", "SENTRY_ISSUER_TTL": "48h"})
    assert (c.root_ttl, c.issuer_ttl) == (7 * D, 24 * H)  # the flag wins over the variable
    assert load_config({}, {"SENTRY_ROOT_TTL": ""}).root_ttl is None  # empty: unset (the template's)


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"root_ttl": "0s"}, "--root-ttl must be positive and at most 87600h"),
        ({"issuer_ttl": "87601h"}, "--issuer-ttl must be positive and at most 87600h"),
        # 3 x the 24 h propagation window: prepared at half, active at a sixth, the window between
        (
            {"root_ttl": "71h"},
            "--root-ttl 71h0m0s is too short: at least 72h0m0s (3 x --root-propagation-window",
        ),
        # 12 x the hourly check: the last sixth must span two checks
        ({"issuer_ttl": "11h"}, "--issuer-ttl 11h0m0s is too short: at least 12h0m0s (12 x --expiry-check"),
        ({"issuer_ttl": "23h", "expiry_check_interval": "2h"}, "at least 24h0m0s"),
        ({"root_ttl": "168h", "issuer_ttl": "169h"}, "an issuer never outlives its root"),
    ],
)
def test_lifetimes_the_rotation_thresholds_cannot_work_with_are_refused(flags, words):
    with pytest.raises(ConfigError) as e:
        cfg(**flags)
    assert words in str(e.value)


def test_the_minimums_follow_the_window_and_the_check_interval():
    assert cfg(root_ttl="72h", issuer_ttl="12h").issuer_ttl == 12 * H
    assert cfg(root_ttl="12h", root_propagation_window="4h", issuer_ttl="12h").root_ttl == 12 * H
    assert cfg(issuer_ttl="1h", expiry_check_interval="5m").issuer_ttl == H
    with pytest.raises(ConfigError, match="12 x --expiry-check-interval 1h"):
        cfg(root_ttl="11h", root_propagation_window="1h")


# --- what a rotation keeps ----------------------------------------------------------------------


def test_unset_a_rotation_keeps_the_lifetime_of_the_certificate_it_replaces():
    bundle = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    kept = lifetimes(settings_of(bundle), cfg())
    assert (kept.root, kept.issuer) == (7 * D, 24 * H)  # validity less the backdate
    assert (kept.root_from, kept.issuer_from) == ("the bundle's", "the bundle's")
    p = policy.bundle_rotation_policy(cfg(), settings_of(bundle))
    rotated = actions.rotate_issuer(bundle, EMPTY, NOW + 3 * H, p).bundle
    assert validity(rotated.issuer) == validity(bundle.issuer) == 24 * H + SKEW
    prepared = actions.prepare_root(bundle, EMPTY, NOW + 3 * H, p).state.prepared_root
    assert validity(prepared.root) == validity(bundle.trust_anchors[0]) == 7 * D + SKEW
    assert validity(prepared.issuer_chain[0]) == 24 * H + SKEW
    # ... with another clock skew, the validity (NotAfter - NotBefore) is kept all the same
    other = policy.bundle_rotation_policy(cfg(allowed_clock_skew="5m"), settings_of(bundle))
    assert validity(actions.rotate_issuer(bundle, EMPTY, NOW + 3 * H, other).bundle.issuer) == 24 * H + SKEW


def test_the_options_win_over_the_bundle_and_an_issuer_never_outlives_its_root():
    bundle = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    c = cfg(issuer_ttl="48h")
    kept = lifetimes(settings_of(bundle), c)
    assert (kept.issuer, kept.issuer_from) == (48 * H, "--issuer-ttl")
    p = policy.bundle_rotation_policy(c, settings_of(bundle))
    assert validity(actions.rotate_issuer(bundle, EMPTY, NOW, p).bundle.issuer) == 48 * H + SKEW
    # an issuer longer than the root is cut to the root's NotAfter (design §4), and warned about
    long = policy.bundle_rotation_policy(cfg(issuer_ttl="720h"), settings_of(bundle))
    cut = actions.rotate_issuer(bundle, EMPTY, NOW + D, long).bundle
    assert cut.issuer.not_valid_after_utc == bundle.trust_anchors[0].not_valid_after_utc
    assert any(
        "issuers are cut to its NotAfter" in w
        for w in policy.lifetime_warnings(cfg(issuer_ttl="720h"), settings_of(bundle))
    )


def test_an_issuer_cut_to_its_root_counts_the_roots_lifetime_not_its_own():
    """Its own validity says only 'at least': keeping it would shorten the issuers of every later
    root. The default bundle (equal lifetimes) keeps one year for both."""
    bundle = make_bundle(NOW, root_lifetime=30 * D, issuer_lifetime=365 * D)
    assert validity(bundle.issuer) == validity(bundle.trust_anchors[0])
    assert lifetimes(settings_of(bundle), cfg()).issuer == 30 * D
    late = actions.rotate_issuer(bundle, EMPTY, NOW + 25 * D, policy.rotation_policy(cfg())).bundle
    assert validity(late.issuer) < 6 * D  # cut to the root's last five days
    assert lifetimes(settings_of(late), cfg()).issuer == 30 * D
    default = lifetimes(settings_of(make_bundle(NOW)), cfg())
    assert (default.root, default.issuer) == (365 * D, 365 * D)


# --- the thresholds at short lifetimes ------------------------------------------------------------


def test_the_margins_scale_with_the_lifetime():
    short = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    prepare, activate = margins(short.issuer)
    assert (prepare, activate) == ((24 * H + SKEW) / 2, (24 * H + SKEW) / 6)  # ~12 h and ~4 h
    assert margins(short.trust_anchors[0]) == ((7 * D + SKEW) / 2, (7 * D + SKEW) / 6)
    assert margins(make_bundle(NOW).issuer) == (30 * D, 7 * D)  # one year: the caps


def run_checks(c, bundle, hours: int, client_every: timedelta | None = None):
    """Step ``bundle`` through ``hours`` expiry checks as a CA with ``c`` takes them (the state
    round-tripped through rotation.json each time); at each check the issuer in force is valid,
    coverage does not alarm, and a leaf it signs verifies against anchors a client fetched up to
    ``client_every`` ago (the workload TTL: the longest a workload keeps its anchors).
    Returns the steps taken."""
    items, steps, now = bundle.to_items(), Counter(), NOW
    fetched: list[tuple[object, bytes]] = [(now, bundle.anchors_pem)]
    every = client_every or c.workload_cert_ttl
    for _ in range(hours):
        now += c.expiry_check_interval
        state = codec.parse_state(items, bundle)
        prepared = state.prepared_root.root if state.prepared_root else None
        taken = rules.advance(
            bundle, state, now, policy.bundle_rotation_policy(c, settings_of(bundle, prepared))
        )
        if taken is not None:
            steps.update((s.kind, s.action) for s in taken.steps)
            bundle, items = taken.bundle, taken.items()
        assert bundle.issuer.not_valid_before_utc <= now < bundle.issuer.not_valid_after_utc, now
        report = stored_expiry_report(items, now)
        assert not report.coverage_short, (now, report.coverage_days)
        fetched = [(t, a) for t, a in fetched if now - t <= every] + [(now, bundle.anchors_pem)]
        leaf = sign_workload(
            bundle.issuer, bundle.issuer_key, make_key().public_key(), "spiffe://a/ns/b/c", now
        )
        oldest = fetched[0][1]
        assert verifies(leaf, list(bundle.issuer_chain), oldest, now), now
    return steps


@pytest.mark.parametrize(
    "root, issuer, window",
    [("72h", "12h", "24h"), ("168h", "24h", "24h"), ("168h", "168h", "24h"), ("720h", "24h", "72h")],
)
def test_the_automatic_policy_works_at_the_shortest_lifetimes_it_accepts(root, issuer, window):
    c = cfg(root_ttl=root, issuer_ttl=issuer, root_propagation_window=window, auto_rotate="true")
    bundle = make_bundle(NOW, root_lifetime=c.root_ttl, issuer_lifetime=c.issuer_ttl)
    hours = int(2 * c.root_ttl / H)  # two root lifetimes
    steps = run_checks(c, bundle, hours, client_every=min(c.root_propagation_window, c.workload_cert_ttl))
    assert steps[("root", "activate")] >= 2 and steps[("root", "prune")] >= 1
    if c.issuer_ttl < c.root_ttl:
        assert steps[("issuer", "activate")] >= 2


def test_unset_the_automatic_policy_keeps_a_bundles_short_lifetimes_for_weeks():
    """A CA started without --root-ttl/--issuer-ttl on a 7-day/24 h bundle (made by `bundle init`
    with them): every rotation keeps 7 days and 24 h, none drifts to the one-year default."""
    c = cfg(auto_rotate="true")
    bundle = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    items, now, seen = bundle.to_items(), NOW, set()
    for _ in range(14 * 24):
        now += H
        state = codec.parse_state(items, bundle)
        prepared = state.prepared_root.root if state.prepared_root else None
        taken = rules.advance(
            bundle, state, now, policy.bundle_rotation_policy(c, settings_of(bundle, prepared))
        )
        if taken is not None:
            bundle, items = taken.bundle, taken.items()
        seen.add((validity(bundle.anchor_for(bundle.issuer_chain[-1])), validity(bundle.issuer)))
    assert seen == {(7 * D + SKEW, 24 * H + SKEW)}


def test_a_root_activates_with_a_fresh_issuer_when_its_prepared_one_ran_low():
    """`rotate root` with a 24 h issuer and the 24 h window: the issuer prepared with the root
    has run out by the activation. Without --auto-rotate nothing else would renew it: the root
    activates with an issuer signed then, by the prepared root's key."""
    bundle = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    p = policy.bundle_rotation_policy(cfg(), settings_of(bundle))
    prepared = actions.prepare_root(bundle, EMPTY, NOW + H, p)
    old_issuer = prepared.state.prepared_root.issuer_chain[0]
    at = prepared.state.prepared_root.activate_after
    assert old_issuer.not_valid_after_utc <= at + SKEW  # it would be spent
    taken = rules.advance(prepared.bundle, prepared.state, at, p)
    (step,) = [s for s in taken.steps if s.action == "activate"]
    new = taken.bundle
    assert step.fields["issuer_renewed"] == "true" and "signed now" in step.message
    assert new.issuer != old_issuer and new.root_key == prepared.state.prepared_root.root_key
    assert new.issuer.not_valid_after_utc == at + 24 * H
    leaf = sign_workload(new.issuer, new.issuer_key, make_key().public_key(), "spiffe://a/ns/b/c", at)
    assert verifies(leaf, list(new.issuer_chain), new.anchors_pem, at)
    # one-year defaults: the prepared issuer is kept, as before
    year = make_bundle(NOW)
    py = policy.bundle_rotation_policy(cfg(), settings_of(year))
    ready = actions.prepare_root(year, EMPTY, NOW, py)
    kept = rules.advance(ready.bundle, ready.state, ready.state.prepared_root.activate_after, py)
    assert kept.bundle.issuer == ready.state.prepared_root.issuer_chain[0]
    assert [s.fields.get("issuer_renewed") for s in kept.steps if s.action == "activate"] == ["false"]


# --- warnings -----------------------------------------------------------------------------------


def test_a_workload_ttl_past_the_issuers_activation_margin_is_warned_about():
    bundle = make_bundle(NOW, root_lifetime=7 * D, issuer_lifetime=24 * H)
    (w,) = policy.lifetime_warnings(cfg(auto_rotate="true"), settings_of(bundle))
    assert "--workload-cert-ttl 24h0m0s is longer than the 4h2m30s an issuer of 24h15m0s has left" in w
    assert (
        policy.lifetime_warnings(cfg(auto_rotate="true", workload_cert_ttl="4h"), settings_of(bundle)) == []
    )
    # the default one-year issuer leaves 7 days: a 24 h leaf is never cut
    assert policy.lifetime_warnings(cfg(), settings_of(make_bundle(NOW))) == []
    # a bundle about to be generated: the configured lifetimes
    (w,) = policy.lifetime_warnings(cfg(root_ttl="168h", issuer_ttl="24h", auto_rotate="true"))
    assert "an issuer of 24h0m0s has left" in w


def test_short_lifetimes_without_auto_rotate_are_warned_about():
    warnings = policy.lifetime_warnings(cfg(root_ttl="168h", issuer_ttl="24h", workload_cert_ttl="4h"))
    assert [w.split(" without")[0] for w in warnings] == ["--root-ttl 168h0m0s", "--issuer-ttl 24h0m0s"]
    with_auto = cfg(root_ttl="168h", issuer_ttl="24h", workload_cert_ttl="4h", auto_rotate="true")
    assert policy.lifetime_warnings(with_auto) == []
