"""The expiry rule of design §8 as a pure function."""

import logging
from datetime import timedelta

import pytest

from ca_core.expiry import check_expiry, expiry_report, signing_coverage

from support.pki import NOW, bundle_with_issuer_window, make_bundle


def findings_at(bundle, now):
    return {f.role: f for f in check_expiry(bundle.anchors_pem, bundle.issuer_chain_pem, now)}


@pytest.mark.parametrize(
    "left, level, words",
    [
        (timedelta(days=-1), logging.ERROR, "expired on"),
        (timedelta(days=10, hours=5), logging.WARNING, "about to expire in 10 days and 5 hours"),
        (timedelta(days=29, hours=23), logging.WARNING, "29 days and 23 hours"),
        (timedelta(days=200), logging.DEBUG, "valid for 200 days"),
    ],
)
def test_levels_for_the_root(left, level, words):
    bundle = make_bundle(NOW, root_lifetime=timedelta(days=365))
    now = bundle.trust_anchors[0].not_valid_after_utc - left
    f = findings_at(bundle, now)["root"]
    assert f.level == level
    assert words in f.message
    assert f.days_left == pytest.approx(left.total_seconds() / 86400)


def test_issuer_is_checked_too():
    bundle = bundle_with_issuer_window(NOW - timedelta(days=100), NOW + timedelta(days=3), NOW)
    f = findings_at(bundle, NOW)
    assert f["root"].level == logging.DEBUG
    assert (
        f["issuer"].level == logging.WARNING
        and "Issuer certificate is about to expire in 3 days" in f["issuer"].message
    )


def test_not_yet_valid_issuer_is_an_error():
    bundle = bundle_with_issuer_window(NOW + timedelta(days=1), NOW + timedelta(days=100), NOW)
    assert findings_at(bundle, NOW)["issuer"].level == logging.ERROR


def test_every_anchor_is_reported():
    a, b = make_bundle(), make_bundle(NOW - timedelta(days=360))
    findings = check_expiry(a.anchors_pem + b.anchors_pem, a.issuer_chain_pem, NOW)
    roots = [f for f in findings if f.role == "root"]
    assert [f.level for f in roots] == [logging.DEBUG, logging.WARNING]


def test_unparseable_root_is_a_warning_not_a_crash():
    bundle = make_bundle()
    findings = check_expiry(b"garbage", bundle.issuer_chain_pem, NOW)
    root = next(f for f in findings if f.role == "root")
    assert root.level == logging.WARNING and "could not be parsed" in root.message and root.days_left is None


def test_signing_coverage_is_the_earliest_not_after_of_the_active_chain():
    # issuer ends before its root: coverage is the issuer's NotAfter
    short = bundle_with_issuer_window(NOW - timedelta(days=1), NOW + timedelta(days=10), NOW)
    root = short.trust_anchors[0]
    assert signing_coverage((*short.issuer_chain, root)) == short.issuer.not_valid_after_utc
    # root ends before the issuer: coverage is the root's NotAfter
    long = make_bundle(NOW, root_lifetime=timedelta(days=20), issuer_lifetime=timedelta(days=365))
    root = long.anchor_for(long.issuer_chain[-1])
    assert signing_coverage((*long.issuer_chain, root)) == root.not_valid_after_utc
    assert root.not_valid_after_utc <= long.issuer.not_valid_after_utc
    # a prepared chain that lasts longer extends coverage; a shorter one does not
    later = make_bundle(NOW, root_lifetime=timedelta(days=400), issuer_lifetime=timedelta(days=300))
    prepared = (*later.issuer_chain, later.trust_anchors[0])
    assert signing_coverage((*long.issuer_chain, root), (prepared,)) == later.issuer.not_valid_after_utc
    assert signing_coverage(prepared, ((*long.issuer_chain, root),)) == later.issuer.not_valid_after_utc


def test_coverage_is_the_active_chain_until_its_earliest_not_after():
    short_issuer = make_bundle(NOW, issuer_lifetime=timedelta(days=10))
    report = expiry_report(short_issuer.anchors_pem, short_issuer.issuer_chain_pem, NOW)
    assert report.coverage_not_after == short_issuer.issuer.not_valid_after_utc
    short_root = make_bundle(NOW, root_lifetime=timedelta(days=5), issuer_lifetime=timedelta(days=10))
    report = expiry_report(short_root.anchors_pem, short_root.issuer_chain_pem, NOW)
    assert report.coverage_not_after == short_root.trust_anchors[0].not_valid_after_utc
    # A prepared chain that lasts longer extends coverage (root rotation will pass it).
    longer = make_bundle(NOW, issuer_lifetime=timedelta(days=90))
    report = expiry_report(
        short_issuer.anchors_pem,
        short_issuer.issuer_chain_pem,
        NOW,
        prepared_chains=((longer.issuer, longer.trust_anchors[0]),),
    )
    assert 89 < report.coverage_days < 91
    # Nothing readable: no coverage, which alarms like an expired chain.
    unreadable = expiry_report(b"junk", b"junk", NOW)
    assert unreadable.coverage_not_after is None and unreadable.coverage_days == 0.0
