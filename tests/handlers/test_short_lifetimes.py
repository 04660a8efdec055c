"""Short lifetimes end to end (issue 16, item 4): a running CA (``CertificateAuthority``, its own
upkeep: ``maintain()`` takes the rotation steps with the real rules and writes them to a file
store) with a 24 h issuer under a 7-day root and ``--auto-rotate``, on an injected clock, for two
simulated weeks. Clients sign through the CA's request path (``Signer.sign``, the INSECURE
validator) and learn the trust anchors only from their answers. At every step every live leaf
verifies (pyca/cryptography's client verifier) for every client, and signing coverage, by the
expiry function's rule on the store's public part, never alarms."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from adapters.stores import FileBundleStore
from ca_core.bundle import fingerprint
from ca_core.expiry import stored_expiry_report
from ca_core.validators import SignRequest, TokenValidatorKind
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.pki import make_csr, verifies

STEP = timedelta(hours=1)  # = --expiry-check-interval: the CA takes rotation steps at each
START = datetime(2026, 3, 2, tzinfo=UTC)
WEEKS = 2


@dataclass
class Client:
    """A workload that renews only when its leaf would expire before the next step (the laziest
    client the design allows: it learns new anchors only when it renews, at least once per
    workload TTL), starting at its own hour so the clients are out of phase."""

    name: str
    starts: datetime
    leaf: x509.Certificate | None = None
    chain: list[x509.Certificate] | None = None
    anchors_pem: bytes = b""
    renewals: int = 0

    def live(self, now: datetime) -> bool:
        return self.leaf is not None and self.leaf.not_valid_before_utc <= now < self.leaf.not_valid_after_utc

    def due(self, now: datetime) -> bool:
        return now >= self.starts and (self.leaf is None or self.leaf.not_valid_after_utc <= now + STEP)

    def renew(self, ca: CertificateAuthority, now: datetime) -> None:
        request = SignRequest(
            self.name, "prod", make_csr(), token_validator=TokenValidatorKind.INSECURE.value
        )
        signed = ca.signer.sign(request, now)
        certs = x509.load_pem_x509_certificates(signed.chain_pem)
        self.leaf, self.chain, self.anchors_pem = certs[0], certs[1:], signed.anchors_pem
        self.renewals += 1


@pytest.mark.parametrize("workload_ttl", ["4h", "24h"])
def test_a_24h_issuer_under_a_7_day_root_rotates_for_two_weeks_and_no_client_notices(
    tmp_path, workload_ttl, caplog
):
    """4h: a sixth of the issuer's lifetime, never cut by it (runbook, "Choosing lifetimes");
    24h: the default, cut to what the issuer has left (the CA warns), so clients renew sooner."""
    store_dir = tmp_path / "credentials"
    clock = [START]
    ca = CertificateAuthority(clock=lambda: clock[0])
    cfg = ca_config(
        store_dir,
        root_ttl="168h",
        issuer_ttl="24h",
        auto_rotate="true",
        expiry_check_interval="1h",
        workload_cert_ttl=workload_ttl,
    )
    with caplog.at_level(logging.WARNING, logger="sentryca"):
        ca.start(cfg)
    cut = [r for r in caplog.records if "lifetimes: --workload-cert-ttl" in r.getMessage()]
    assert len(cut) == (1 if workload_ttl == "24h" else 0)  # the CA says leaves will be cut
    store = FileBundleStore(store_dir)
    clients = [Client(f"app{n}", START + n * 3 * STEP) for n in range(6)]
    issuers, roots, lowest_coverage = set(), set(), None
    try:
        first = ca.signer.bundle
        assert first.issuer.not_valid_after_utc - first.issuer.not_valid_before_utc == timedelta(
            hours=24, minutes=15
        )  # 24 h plus the 15 min backdate
        assert first.trust_anchors[0].not_valid_after_utc - START == timedelta(days=7)
        while clock[0] < START + timedelta(weeks=WEEKS):
            clock[0] += STEP
            now = clock[0]
            ca.maintain()  # the CA's upkeep: rotation steps due, the expiry check, renewals
            ready, detail = ca.readiness()
            assert ready, (now, detail)
            bundle = ca.signer.bundle
            issuers.add(bundle.issuer.serial_number)
            roots.add(fingerprint(bundle.anchor_for(bundle.issuer_chain[-1])))
            for c in clients:
                if c.due(now):
                    c.renew(ca, now)
            for holder in clients:
                if not holder.live(now):
                    continue
                for peer in clients:
                    if peer.anchors_pem:
                        assert verifies(holder.leaf, holder.chain, peer.anchors_pem, now), (
                            f"{now}: {holder.name}'s leaf (issuer {holder.leaf.issuer.rfc4514_string()}) "
                            f"does not verify for {peer.name}"
                        )
            public = store.load_public()
            assert public is not None
            report = stored_expiry_report(public.items, now)
            assert not report.coverage_short, (now, report.coverage_days, report.alarm_within)
            ratio = report.coverage_ratio
            lowest_coverage = ratio if lowest_coverage is None else min(lowest_coverage, ratio)
    finally:
        ca.stop(grace=0)
    steps = Counter(
        (s.labels["kind"], s.labels["step"])
        for s in _samples(ca, "sentryca_rotation_steps_total")
        for _ in range(int(s.value))
    )
    # 14 days of 24 h issuers; a 7-day root active for half its life: 3 or 4 root rotations
    assert steps[("issuer", "activate")] >= 20
    assert steps[("root", "activate")] >= 3 and steps[("root", "prune")] >= 3
    assert len(issuers) >= 20 and len(roots) >= 4
    hours = int(workload_ttl.removesuffix("h"))
    assert all(c.renewals >= 14 * 24 // hours for c in clients)  # at least once per workload TTL
    assert lowest_coverage is not None and lowest_coverage > 1


def _samples(ca, name):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(ca.metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name:
                yield s
