"""The running CA's calls to AWS Private CA (design §5.16) against the loopback double
(support.acmpca_double): made without the lifecycle lock, so a restart or a stop issued while
Private CA says nothing completes at once and signing goes on; an answer is handed to the rules
only for the bundle it was asked for, and a pending certificate is polled, never asked for again;
each call is bounded (``--upstream-timeout``, ``--upstream-max-attempts``); failures are counted
(``sentryca_upstream_failures_total{reason}``, ``sentryca_upstream_failing``, scraped from the
CA's metrics endpoint) and reported in ``/healthz`` (fetched over HTTP), which stays 200."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from adapters.acm_pca import AcmPcaAuthority, Backoff
from adapters.stores import FileBundleStore
from ca_core.bundle import ROTATION_STATE
from ca_core.bundle_settings import settings_of
from ca_core.errors import Unavailable
from ca_core.keys import KeyAlgorithm
from ca_core.policy import bundle_rotation_policy
from ca_core.rotation import codec
from ca_core.upstream import issuer_request, upstream_bundle
from ca_core.validators import SignRequest, TokenValidatorKind
from handlers import emf
from handlers.metrics import Metrics
from handlers.server import CertificateAuthority
from handlers.server.upstream_step import UpstreamIssuerStep

from support.acmpca_double import AcmPcaDouble
from support.ca import ca_config
from support.pki import make_csr

FLAGS = {
    "issuer_ttl": "24h",
    "auto_rotate": "true",
    "expiry_check_interval": "1h",
    "workload_cert_ttl": "4h",
}


def signs(ca: CertificateAuthority, now: datetime) -> bool:
    request = SignRequest("app", "prod", make_csr(), token_validator=TokenValidatorKind.INSECURE.value)
    return bool(ca.signer.sign(request, now).chain_pem)


def prepared_issuer_serial(store_dir) -> str | None:
    stored = FileBundleStore(store_dir).load()
    assert stored is not None
    if ROTATION_STATE not in stored.items:
        return None
    prepared = json.loads(stored.items[ROTATION_STATE])["issuer"]["prepared"]
    return prepared["serial"] if prepared else None


def upstream_ask_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "upstream-ask" and t.is_alive()]


# --- no call under the lifecycle lock -----------------------------------------------------------


def test_a_restart_and_a_stop_complete_while_private_ca_says_nothing_and_signing_goes_on(tmp_path, double):
    """The watcher's own path: with a 1 s expiry check on an injected clock it runs a round each
    second; past the prepare margin it asks Private CA, which accepts the call and stalls (for as
    long as the test wants: the CA's read timeout is 60 s). While it stalls, a restart with a new
    configuration and then a stop both return, the ask still under way; signing works meanwhile.
    Released, the ask completes on its own thread; the answer, kept across the stop, is prepared
    by the next start: one IssueCertificate in all."""
    clock = [datetime.now(UTC)]
    store = tmp_path / "credentials"
    flags = {**FLAGS, "expiry_check_interval": "1s", "upstream_timeout": "60s"}
    cfg = ca_config(store, upstream_authority=double.upstream, **flags)
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(cfg)
    try:
        first = ca.signer.bundle.issuer
        double.calls.clear()
        double.issued.clear()  # what the start asked for
        double.stall()
        clock[0] += timedelta(hours=13)  # past the prepare margin (12 h left of 24 h)
        assert double.holding.wait(60), "the watcher never asked Private CA"
        (asking,) = upstream_ask_threads()
        assert ca.readiness()[1]["upstream"]["asking"] is True
        assert signs(ca, clock[0])

        ca.restart(cfg.with_changes(workload_cert_ttl=timedelta(hours=2)))  # in place
        assert double.held == 1 and asking.is_alive()  # returned while Private CA still says nothing
        assert ca.config is not None and ca.config.workload_cert_ttl == timedelta(hours=2)
        ready, detail = ca.readiness()
        assert ready and detail["upstream"]["asking"] is True, detail
        assert ca.signer.bundle.issuer == first and signs(ca, clock[0])

        ca.stop(grace=0)  # as on SIGTERM
        assert double.held == 1 and asking.is_alive()  # returned while Private CA still says nothing
        assert not ca.running
    finally:
        double.release()
    asking.join(timeout=60)
    assert not asking.is_alive()
    assert double.held_in_all == 1 and double.calls.count("IssueCertificate") == 1

    ca.start(cfg)  # the answer the stopped CA got, for this same bundle, is the one prepared
    try:
        ca.maintain()
        (issued,) = double.issued.values()
        assert prepared_issuer_serial(store) == f"{issued.serial_number:x}"
        assert double.calls.count("IssueCertificate") == 1
        detail = ca.readiness()[1]["upstream"]
        assert detail["failing"] is False and detail["last_success"] is not None
    finally:
        ca.stop(grace=0)


def test_an_answer_for_another_bundle_is_dropped_and_a_pending_certificate_is_polled_not_asked_again(
    tmp_path, double, caplog
):
    """The step's three parts on their own: an answer is handed over only while the bundle's
    active root and issuer are those it was asked for; a pending certificate stays remembered for
    the same upstream and root whatever else changed, so the next ask polls it."""
    now = datetime.now(UTC)
    cfg = ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **FLAGS)
    ca = CertificateAuthority(clock=lambda: now)
    ca.start(cfg)
    bundle = ca.signer.bundle
    ca.stop(grace=0)
    state = codec.parse_state({}, bundle)
    policy = bundle_rotation_policy(cfg, settings_of(bundle))
    later = now + timedelta(hours=13)
    # another issuer under the same root, as another replica would have put in force
    request = issuer_request(
        policy.ca_identity, KeyAlgorithm.ECDSA_P256, now, lifetime=timedelta(hours=24), backdate=timedelta(0)
    )
    other = upstream_bundle(request, *AcmPcaAuthority(double.upstream).issue_issuer(request), now)
    double.calls.clear()
    waits: list[float] = []
    step = UpstreamIssuerStep(
        Metrics(),
        lambda up: AcmPcaAuthority(up, backoff=Backoff(polls=0), sleep=waits.append),
        clock=lambda: later,
    )

    assert step(bundle, state, later, policy) is None  # decided: an ask planned, none made
    assert double.calls == []
    ask = step.take()
    assert ask is not None and step.take() is None  # one at a time
    assert step(bundle, state, later, policy) is None and step.take() is None  # none while under way
    step.run(ask)
    assert step.answered and double.calls.count("IssueCertificate") == 1
    with caplog.at_level(logging.INFO, logger="sentryca"):
        assert step(other, state, later, policy) is None  # the bundle changed: dropped
    assert any("dropped the issuer" in r.getMessage() for r in caplog.records)
    assert not step.answered

    double.pending_polls = 1  # the next certificate is pending at its first poll
    pending = step.take()
    assert pending is not None and pending.pending is None
    step.run(pending)
    assert step.report(double.upstream)["last_problem"] == "upstream_pending"
    arn = step.report(double.upstream)["pending"]
    assert arn in double.issued and double.calls.count("IssueCertificate") == 2
    # the same root, another bundle (the issuer changed again): the pending one is polled
    assert step(bundle, state, later, policy) is None
    resumed = step.take()
    assert resumed is not None and resumed.pending is not None and resumed.pending[1] == arn
    step.run(resumed)
    assert double.calls.count("IssueCertificate") == 2 and step.answered
    chain, _ = step(bundle, state, later, policy)
    assert chain[0] == double.issued[arn] and chain[-1] == double.ca
    assert step.report(double.upstream)["failing"] is False


# --- measured and reported ----------------------------------------------------------------------


def scrape(ca: CertificateAuthority) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ca.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^(sentryca_upstream_\S+) (\S+)$", text, re.M)
    }


def healthz(ca: CertificateAuthority) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ca.healthz_port}/healthz", timeout=10) as r:
        return r.status, json.loads(r.read())


def test_failures_are_counted_by_reason_and_reported_in_healthz_which_stays_200(tmp_path, double):
    clock = [datetime.now(UTC)]
    ca = CertificateAuthority(clock=lambda: clock[0])  # the default adapter: 2 tries of each call
    ca.start(ca_config(tmp_path / "credentials", upstream_authority=double.upstream, **FLAGS))
    throttled = 'sentryca_upstream_failures_total{reason="upstream_throttled"}'
    denied = 'sentryca_upstream_failures_total{reason="upstream_denied"}'
    try:
        metrics = scrape(ca)
        assert metrics["sentryca_upstream_failing"] == 0 and metrics[throttled] == 0 and metrics[denied] == 0
        status, body = healthz(ca)
        assert status == 200 and body["upstream"] == {
            "authority": double.upstream,
            "failing": False,
            "failures": 0,
            "last_problem": None,
            "last_success": None,
            "asking": False,
            "pending": None,
        }
        double.calls.clear()
        double.fail["IssueCertificate"].extend(["ThrottlingException"] * 2)
        clock[0] += timedelta(hours=13)  # past the prepare margin
        ca.maintain()
        assert double.calls.count("IssueCertificate") == 2  # --upstream-max-attempts, no SDK retry
        metrics = scrape(ca)
        assert metrics["sentryca_upstream_failing"] == 1 and metrics[throttled] == 1
        status, body = healthz(ca)
        assert status == 200 and body["ready"] is True
        assert body["upstream"]["failing"] is True and body["upstream"]["failures"] == 1
        assert body["upstream"]["last_problem"] == "upstream_throttled"
        docs = emf.documents(emf.samples(ca.metrics.registry.collect()), {}, time.time(), "s")
        assert docs[0][emf.UPSTREAM_FAILING] == 1

        double.fail["GetCertificateAuthorityCertificate"].append("AccessDeniedException")
        clock[0] += timedelta(hours=1)
        ca.maintain()
        metrics = scrape(ca)
        assert metrics[denied] == 1 and metrics[throttled] == 1 and metrics["sentryca_upstream_failing"] == 1
        status, body = healthz(ca)
        assert status == 200 and body["ready"] is True
        assert body["upstream"]["failures"] == 2 and body["upstream"]["last_problem"] == "upstream_denied"

        clock[0] += timedelta(hours=1)  # Private CA answers again
        ca.maintain()
        assert prepared_issuer_serial(tmp_path / "credentials") is not None
        metrics = scrape(ca)
        assert metrics["sentryca_upstream_failing"] == 0 and metrics[denied] == 1
        status, body = healthz(ca)
        assert status == 200 and body["upstream"]["failing"] is False and body["upstream"]["failures"] == 0
        assert body["upstream"]["last_success"] == clock[0].isoformat()
        assert body["upstream"]["last_problem"] == "upstream_denied"  # the last one seen
    finally:
        ca.stop(grace=0)


def test_a_ca_without_an_upstream_has_no_upstream_metrics_or_report(tmp_path):
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "credentials"))
    try:
        assert scrape(ca) == {}
        status, body = healthz(ca)
        assert status == 200 and "upstream" not in body
        docs = emf.documents(emf.samples(ca.metrics.registry.collect()), {}, time.time(), "s")
        assert emf.UPSTREAM_FAILING not in docs[0]
    finally:
        ca.stop(grace=0)


# --- what an attempt that got no issuer leaves behind never costs a second IssueCertificate ----


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
