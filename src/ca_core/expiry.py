"""The expiry rule of design §8, as a pure function over certificates and ``now``.

For each trust anchor (role ``root``) and the issuer (role ``issuer``):
unparseable → WARNING; expired (or not yet valid) → ERROR; less than ``warn_within`` left →
WARNING with days and hours left; else DEBUG with the remaining validity. ``warn_within``
defaults to :func:`warn_within_for` the certificate: 30 days, or the last twelfth of a lifetime
shorter than 360 days (a 24 h issuer warns in its last 2 h, after its successor should have taken
over). Signing coverage alarms below :func:`coverage_alarm_within`. Used by the server's watcher
and the scheduled expiry function alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from .bundle import ANCHORS, ISSUER_CHAIN, ROTATION_STATE, chain_not_after, parse_public_bundle
from .errors import BundleError
from .rotation.document import prepared_not_after as recorded_prepared_not_after

WARN_WITHIN = timedelta(days=30)
# The automatic policy (design §5.12) prepares a successor with half a lifetime L left and
# activates it with a sixth left, at expiry checks at most L/12 apart (--root-ttl, --issuer-ttl
# validation). So signing coverage never falls below L/2 - L/12 while it works: the alarm fires
# below L/3 (30 days for L of 90 days or more), and a certificate warns in its last twelfth (30
# days for 360 days or more), both past the point the policy would have acted.
COVERAGE_ALARM_FRACTION = 3
WARN_FRACTION = 12


def warn_within_for(cert: x509.Certificate) -> timedelta:
    """How long before its NotAfter ``cert`` gets a WARNING: min(30 days, its validity / 12)."""
    return min(WARN_WITHIN, (cert.not_valid_after_utc - cert.not_valid_before_utc) / WARN_FRACTION)


def coverage_alarm_within(issuer: x509.Certificate) -> timedelta:
    """The signing coverage below which the coverage alarm fires for a bundle whose active issuer
    is ``issuer``: min(30 days, its validity / 3) — 30 days for the default one-year issuer, 8 h
    for a 24 h one."""
    lifetime = issuer.not_valid_after_utc - issuer.not_valid_before_utc
    return min(WARN_WITHIN, lifetime / COVERAGE_ALARM_FRACTION)


@dataclass(frozen=True)
class ExpiryFinding:
    """One certificate's expiry state.

    role: "root" or "issuer"; level: a ``logging`` level (DEBUG, WARNING, ERROR);
    not_after: aware UTC datetime or None when unparseable; remaining: timedelta (negative
    when expired) or None; message: the log line; lifetime: NotAfter - NotBefore (None when
    unparseable).
    """

    role: str
    subject: str
    level: int
    not_after: datetime | None
    remaining: timedelta | None
    message: str
    lifetime: timedelta | None = None

    @property
    def days_left(self) -> float | None:
        """Remaining validity in days (fractional; negative when expired), None when unparseable."""
        return None if self.remaining is None else self.remaining.total_seconds() / 86400


def _days_hours(delta: timedelta) -> tuple[int, int]:
    hours = int(delta.total_seconds() // 3600)
    return hours // 24, hours % 24


def check_certificate(
    cert: x509.Certificate, role: str, now: datetime, warn_within: timedelta | None = None
) -> ExpiryFinding:
    """The expiry finding for one parsed certificate at ``now`` (aware UTC); ``warn_within``:
    None for :func:`warn_within_for` the certificate."""
    if warn_within is None:
        warn_within = warn_within_for(cert)
    name = role.capitalize()
    not_after = cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    remaining = not_after - now
    lifetime = not_after - cert.not_valid_before_utc
    if remaining <= timedelta(0):
        return ExpiryFinding(
            role,
            subject,
            logging.ERROR,
            not_after,
            remaining,
            f"{name} certificate expired on {not_after.isoformat()} ({subject})",
            lifetime,
        )
    if now < cert.not_valid_before_utc:
        return ExpiryFinding(
            role,
            subject,
            logging.ERROR,
            not_after,
            remaining,
            f"{name} certificate is not valid before {cert.not_valid_before_utc.isoformat()} ({subject})",
            lifetime,
        )
    if remaining < warn_within:
        days, hours = _days_hours(remaining)
        return ExpiryFinding(
            role,
            subject,
            logging.WARNING,
            not_after,
            remaining,
            f"{name} certificate is about to expire in {days} days and {hours} hours "
            f"(on {not_after.isoformat()}; {subject})",
            lifetime,
        )
    days, hours = _days_hours(remaining)
    return ExpiryFinding(
        role,
        subject,
        logging.DEBUG,
        not_after,
        remaining,
        f"{name} certificate is valid for {days} days and {hours} hours (until {not_after.isoformat()})",
        lifetime,
    )


def check_expiry(
    anchors_pem: bytes, issuer_chain_pem: bytes, now: datetime, warn_within: timedelta | None = None
) -> list[ExpiryFinding]:
    """Findings for every trust anchor and the issuer, from the public part's PEM bytes.

    Bytes that do not parse give one WARNING finding for that role instead of an exception.
    """
    findings: list[ExpiryFinding] = []
    for role, pem, item in (("root", anchors_pem, ANCHORS), ("issuer", issuer_chain_pem, ISSUER_CHAIN)):
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except (ValueError, x509.InvalidVersion):
            findings.append(
                ExpiryFinding(
                    role,
                    "",
                    logging.WARNING,
                    None,
                    None,
                    f"{role.capitalize()} certificate ({item}) could not be parsed; expiry unknown",
                )
            )
            continue
        for cert in certs if role == "root" else certs[:1]:
            findings.append(check_certificate(cert, role, now, warn_within))
    return findings


@dataclass(frozen=True)
class ExpiryReport:
    """The expiry state of a bundle's public part (design §8, §9).

    findings: one per trust anchor and the issuer (see :func:`check_expiry`);
    coverage_not_after: the latest NotAfter among the signing chains (active and prepared) that
    verify to an anchor, each chain counting until its earliest NotAfter (issuer, intermediates,
    root) — None when no chain can be read; now: the instant of the check (aware UTC);
    alarm_within: the coverage below which the alarm fires (:func:`coverage_alarm_within` the
    active issuer; 30 days when the issuer cannot be read).
    """

    findings: list[ExpiryFinding]
    coverage_not_after: datetime | None
    now: datetime
    alarm_within: timedelta = WARN_WITHIN

    @property
    def coverage_ratio(self) -> float:
        """Coverage over :attr:`alarm_within` (below 1: the coverage alarm fires; 0 when no chain
        can be read). For a one-year issuer, coverage days / 30."""
        if self.coverage_not_after is None:
            return 0.0
        return (self.coverage_not_after - self.now) / self.alarm_within

    @property
    def coverage_short(self) -> bool:
        """Whether the coverage alarm's rule fires: coverage below :attr:`alarm_within`."""
        return self.coverage_ratio < 1

    @property
    def coverage_days(self) -> float:
        """Days of signing left (fractional; negative once passed; 0 when no chain can be read,
        so an unreadable bundle alarms like an expired one)."""
        if self.coverage_not_after is None:
            return 0.0
        return (self.coverage_not_after - self.now).total_seconds() / 86400

    @property
    def level(self) -> int:
        """The most severe finding's level (ERROR when there is no coverage at all)."""
        worst = max((f.level for f in self.findings), default=logging.DEBUG)
        return logging.ERROR if self.coverage_not_after is None else worst


def signing_coverage(
    active_chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
    prepared_chains: tuple[tuple[x509.Certificate, ...], ...] = (),
) -> datetime:
    """Signing coverage (design §9): the latest NotAfter among the active and prepared signing
    chains, each chain counting until its earliest NotAfter (issuer, intermediates, root).

    active_chain: the issuer chain in force plus the anchor it verifies to (issuer first, root
    last); prepared_chains: chains prepared by a rotation, same shape (none without rotation, so
    coverage is then min(issuer NotAfter, its root's NotAfter)). Returns aware UTC datetime.
    """
    return max(chain_not_after(c) for c in (tuple(active_chain), *prepared_chains))


def expiry_report(
    anchors_pem: bytes,
    issuer_chain_pem: bytes,
    now: datetime,
    *,
    prepared_chains: tuple[tuple[x509.Certificate, ...], ...] = (),
    prepared_not_after: tuple[datetime, ...] = (),
    warn_within: timedelta | None = None,
) -> ExpiryReport:
    """Findings plus coverage for a bundle's public part (``ca.crt``, ``issuer.crt`` PEM bytes).

    The active chain is the issuer chain plus the anchor that issued its last certificate;
    ``prepared_chains`` are full chains, issuer first, root last; ``prepared_not_after`` the
    end of each prepared chain as a rotation state records it (``rotation.document.prepared_not_after``,
    readable from the public part without keys). Coverage = max over chains of each chain's
    earliest NotAfter (design §9). Never raises for bad input: an unreadable or unverifiable public
    part gives no active chain.
    """
    findings = check_expiry(anchors_pem, issuer_chain_pem, now, warn_within)
    try:
        public = parse_public_bundle({ANCHORS: anchors_pem, ISSUER_CHAIN: issuer_chain_pem})
    except BundleError:
        public = None
    root = public.anchor_for(public.issuer_chain[-1]) if public is not None else None
    prepared = (*(chain_not_after(c) for c in prepared_chains), *prepared_not_after)
    if public is not None and root is not None:
        coverage: datetime | None = max((chain_not_after((*public.issuer_chain, root)), *prepared))
    else:
        coverage = max(prepared, default=None)
    alarm_within = coverage_alarm_within(public.issuer) if public is not None else WARN_WITHIN
    return ExpiryReport(findings, coverage, now, alarm_within)


def stored_expiry_report(items: Mapping[str, bytes], now: datetime) -> ExpiryReport:
    """:func:`expiry_report` for a bundle's store items (its public part suffices: ``ca.crt``,
    ``issuer.crt`` and, when present, ``rotation.json``, whose prepared chains count for coverage
    without any key being read). The one report the server's watcher and the scheduled expiry
    function both give (design §9.5). Never raises for bad input."""
    anchors_pem = items.get(ANCHORS, b"")
    try:
        anchors = tuple(x509.load_pem_x509_certificates(anchors_pem))
    except ValueError:
        anchors = ()
    return expiry_report(
        anchors_pem,
        items.get(ISSUER_CHAIN, b""),
        now,
        prepared_not_after=recorded_prepared_not_after(items.get(ROTATION_STATE), anchors),
    )
