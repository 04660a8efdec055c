"""Follow-up checks of the running CA's calls to AWS Private CA (design §5.16), against the
loopback double (support.acmpca_double): what an attempt that got no issuer leaves behind must
never cost a second IssueCertificate for the same issuer."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from adapters.stores import FileBundleStore
from ca_core.bundle import ROTATION_STATE
from ca_core.errors import Unavailable
from handlers.server import CertificateAuthority

from support.acmpca_double import AcmPcaDouble
from support.ca import ca_config

FLAGS = {"issuer_ttl": "24h", "auto_rotate": "true", "expiry_check_interval": "1h", "workload_cert_ttl": "4h"}


@pytest.fixture
def double(monkeypatch):
    with AcmPcaDouble() as d:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ACM_PCA", d.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield d


def prepared_issuer_serial(store_dir) -> str | None:
    stored = FileBundleStore(store_dir).load()
    assert stored is not None
    if ROTATION_STATE not in stored.items:
        return None
    prepared = json.loads(stored.items[ROTATION_STATE])["issuer"]["prepared"]
    return prepared["serial"] if prepared else None


@pytest.mark.parametrize(("code", "tries"), [("ThrottlingException", 2), ("AccessDeniedException", 1)])
def test_an_issued_certificate_whose_poll_failed_is_polled_at_the_next_check_not_asked_for_again(
    tmp_path, double, code, tries
):
    """IssueCertificate answers, then every GetCertificate of that attempt fails (throttled: the
    default 2 tries; denied: not retried): the certificate exists and is paid for, so the next
    expiry check polls its ARN instead of sending a second IssueCertificate for a new key."""
    clock = [datetime.now(UTC)]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **FLAGS))
    try:
        double.calls.clear()
        double.issued.clear()  # what the start asked for
        double.fail["GetCertificate"].extend([code] * tries)
        clock[0] += timedelta(hours=13)  # past the prepare margin
        ca.maintain()
        (arn,) = double.issued
        detail = ca.readiness()[1]["upstream"]
        assert detail["failing"] is True and detail["pending"] == arn
        clock[0] += timedelta(hours=1)
        ca.maintain()
        assert double.calls.count("IssueCertificate") == 1, double.calls
        assert prepared_issuer_serial(tmp_path / "credentials") == f"{double.issued[arn].serial_number:x}"
        assert ca.readiness()[1]["upstream"]["failing"] is False
    finally:
        ca.stop(grace=0)


def test_a_private_ca_ending_no_later_than_the_current_issuer_is_asked_for_nothing(tmp_path, monkeypatch):
    """Private CA's own certificate ends within a day: the first issuer is cut to its NotAfter,
    and so would every later one be, no later than the current issuer, which the rules never
    prepare. Each expiry check past the prepare margin reads Private CA's certificate and refuses
    before IssueCertificate (nothing bought), reported as failing, not as a success."""
    with AcmPcaDouble(days=1) as double:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ACM_PCA", double.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        clock = [datetime.now(UTC)]
        ca = CertificateAuthority(clock=lambda: clock[0])
        ca.start(ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **FLAGS))
        try:
            assert ca.signer.bundle.issuer.not_valid_after_utc == double.ca.not_valid_after_utc
            double.calls.clear()
            clock[0] += timedelta(hours=13)  # past the prepare margin
            for _ in range(3):
                ca.maintain()
                clock[0] += timedelta(hours=1)
            assert double.calls.count("IssueCertificate") == 0, double.calls
            assert double.calls.count("GetCertificateAuthorityCertificate") == 3
            ready, detail = ca.readiness()
            assert ready and detail["upstream"]["failing"] is True and detail["upstream"]["failures"] == 3
            assert detail["upstream"]["last_problem"] == "upstream_invalid_state"
            assert prepared_issuer_serial(tmp_path / "credentials") is None
        finally:
            ca.stop(grace=0)


def test_an_answer_whose_write_failed_is_handed_again_not_asked_for_again(tmp_path, double, monkeypatch):
    """Private CA answers, the rules prepare its issuer, and the store refuses that write once
    (throttled): the certificate bought is handed to the rules again at the next check, which
    writes it; one IssueCertificate in all."""
    clock = [datetime.now(UTC)]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **FLAGS))
    write, failures = FileBundleStore.replace_version, [Unavailable("the store is throttled")]

    def flaky(store, items, version):
        if failures:
            raise failures.pop()
        return write(store, items, version)

    monkeypatch.setattr(FileBundleStore, "replace_version", flaky)
    try:
        double.calls.clear()
        double.issued.clear()  # what the start asked for
        clock[0] += timedelta(hours=13)  # past the prepare margin
        ca.maintain()
        assert not failures and prepared_issuer_serial(tmp_path / "credentials") is None
        clock[0] += timedelta(hours=1)
        ca.maintain()
        assert double.calls.count("IssueCertificate") == 1, double.calls
        (issued,) = double.issued.values()
        assert prepared_issuer_serial(tmp_path / "credentials") == f"{issued.serial_number:x}"
    finally:
        ca.stop(grace=0)


def test_an_ask_no_longer_wanted_that_fails_leaves_nothing_failing(tmp_path, double):
    """An ask is under way (Private CA stalls, on the watcher's thread) when a restart turns
    --auto-rotate off: nothing is wanted from the upstream any more. The ask then fails (denied):
    neither the gauge nor /healthz may say failing, which nothing would clear before the next
    expiry check, two hours here (as long as the alarm waits)."""
    clock = [datetime.now(UTC)]
    flags = {**FLAGS, "expiry_check_interval": "1s", "upstream_timeout": "60s"}
    cfg = ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **flags)
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(cfg)
    try:
        double.stall()
        double.fail["GetCertificateAuthorityCertificate"].append("AccessDeniedException")
        clock[0] += timedelta(hours=13)  # past the prepare margin: the watcher asks
        assert double.holding.wait(60), "the watcher never asked Private CA"
        (asking,) = [t for t in threading.enumerate() if t.name == "upstream-ask" and t.is_alive()]
        ca.restart(cfg.with_changes(auto_rotate=False, expiry_check_interval=timedelta(hours=2)))
        assert not ca.rotate_if_due()  # the rules' decision: nothing is wanted any more
        double.release()
        asking.join(timeout=60)
        assert not asking.is_alive()
        detail = ca.readiness()[1]["upstream"]
        assert detail["failing"] is False and detail["failures"] == 0, detail
        assert ca.metrics.registry.get_sample_value("sentryca_upstream_failing") == 0
    finally:
        double.release()
        ca.stop(grace=0)
