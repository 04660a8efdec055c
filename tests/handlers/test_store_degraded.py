"""A running CA whose store stops backing it (design §8.4): the store found empty, unreadable or
holding a refused bundle is said at once (one ERROR per distinct problem, the gauge
``sentryca_store_degraded``, ``degraded`` in ``/healthz``, still 200), the CA keeps signing with
the bundle in force, and all of it clears when the store is back."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest

from adapters.stores import FileBundleStore
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.pki import make_bundle
from support.probe import healthz, metric, signs
from support.wait import wait_until


def degraded_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "store_degraded"]


@pytest.fixture
def polling_ca(store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, store_poll_interval="200ms"))
    try:
        yield ca
    finally:
        ca.stop(grace=0)


def test_a_polling_ca_whose_store_directory_is_deleted_says_so_keeps_signing_and_clears(
    polling_ca, store_dir, caplog
):
    caplog.set_level(logging.INFO)
    anchors = (store_dir / "ca.crt").read_bytes()
    backup = dict(FileBundleStore(store_dir).load().items)
    status, body = healthz(polling_ca)
    assert status == 200 and "degraded" not in body
    assert metric(polling_ca, "sentryca_store_degraded") == 0

    shutil.rmtree(store_dir)  # the tester's `rm -rf`
    _, body = wait_until(lambda: (s := healthz(polling_ca))[1].get("degraded") and s, "degraded in /healthz")
    status, body = healthz(polling_ca)
    assert status == 200 and body["ready"] is True  # still serving what it holds
    assert body["degraded"]["problem"] == "store_empty"
    assert body["degraded"]["store"] == f"file://{store_dir}"
    assert "bundle import" in body["degraded"]["detail"]
    assert metric(polling_ca, "sentryca_store_degraded") == 1
    assert signs(polling_ca, anchors)  # a client still gets certificates from the bundle in force
    time.sleep(1.0)  # about five more polls, each finding the same problem
    records = degraded_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]  # once per problem, not per poll
    assert records[0].levelno == logging.ERROR and str(store_dir) in records[0].getMessage()

    assert FileBundleStore(store_dir).create(backup)  # restored (what `bundle import --from` writes)
    wait_until(lambda: "degraded" not in healthz(polling_ca)[1], "degraded cleared")
    assert metric(polling_ca, "sentryca_store_degraded") == 0
    assert any(getattr(r, "event", None) == "store_recovered" for r in caplog.records)
    assert polling_ca.signer.bundle.anchors_pem == anchors and signs(polling_ca, anchors)


def test_an_unreadable_store_and_a_refused_bundle_are_each_reported_once(polling_ca, store_dir, caplog):
    caplog.set_level(logging.INFO)
    backup = dict(FileBundleStore(store_dir).load().items)
    refused_before = metric(polling_ca, "sentryca_bundle_change_refused_total")

    shutil.rmtree(store_dir)
    store_dir.write_text("not a directory")  # every read fails: unreadable, never "empty"
    wait_until(
        lambda: (healthz(polling_ca)[1].get("degraded") or {}).get("problem") == "store_unreadable",
        "unreadable",
    )
    assert healthz(polling_ca)[0] == 200

    store_dir.unlink()
    other = make_bundle(datetime.now(UTC)).to_items()  # another CA: drops the active root
    assert FileBundleStore(store_dir).create(other)
    wait_until(
        lambda: (healthz(polling_ca)[1].get("degraded") or {}).get("problem") == "bundle_refused", "refused"
    )
    assert "active root" in healthz(polling_ca)[1]["degraded"]["detail"]
    assert polling_ca.signer.bundle.anchors_pem == backup["ca.crt"]  # the bundle in force stays
    time.sleep(0.6)
    assert [getattr(r, "problem", None) for r in degraded_records(caplog)] == [
        "store_unreadable",
        "bundle_refused",
    ]
    assert metric(polling_ca, "sentryca_bundle_change_refused_total") == refused_before + 1

    store = FileBundleStore(store_dir)
    assert store.replace(backup, store.load().version)  # back to the bundle in force
    wait_until(lambda: "degraded" not in healthz(polling_ca)[1], "degraded cleared")
    assert metric(polling_ca, "sentryca_store_degraded") == 0


class Clock:
    def __init__(self) -> None:
        self.t = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.t


def test_without_polling_the_expiry_check_round_reads_the_store(store_dir, caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    ca = CertificateAuthority(clock=clock)
    ca.start(ca_config(store_dir, expiry_check_interval="1h"))  # --store-poll-interval 0s
    try:
        backup = dict(FileBundleStore(store_dir).load().items)
        shutil.rmtree(store_dir)
        ca.maintain()  # the expiry check is not due: the store is not read
        assert "degraded" not in healthz(ca)[1]
        clock.t += timedelta(hours=1)
        ca.maintain()
        status, body = healthz(ca)
        assert status == 200 and body["degraded"]["problem"] == "store_empty"
        assert metric(ca, "sentryca_store_degraded") == 1
        clock.t += timedelta(hours=1)
        ca.maintain()
        assert len(degraded_records(caplog)) == 1
        assert FileBundleStore(store_dir).create(backup)
        clock.t += timedelta(hours=1)
        ca.maintain()
        assert "degraded" not in healthz(ca)[1] and metric(ca, "sentryca_store_degraded") == 0
    finally:
        ca.stop(grace=0)
