"""Prometheus metrics with Dapr Sentry's names (design §9), one registry per CA instance.

Label values are bounded by construction: failure ``category`` is one of CATEGORIES and
``reason`` a code-defined label (see :func:`bounded_reason`); no caller input ever becomes a label.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Coarse failure categories (the ``category`` label of the failure counter).
CATEGORIES = (
    "invalid_request",  # INVALID_ARGUMENT: validator choice, CSR bytes, undecodable message
    "permission_denied",  # PERMISSION_DENIED: identity not proven or not allowed
    "unavailable",  # UNAVAILABLE: an identity backend or store cannot be used
    "issuer_invalid",  # FAILED_PRECONDITION: issuer expired or not yet valid
    "rate_limited",  # RESOURCE_EXHAUSTED: the per-caller limit
    "internal",  # INTERNAL: an unexpected error
)

_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")

# Why an attempt got no issuer from the upstream authority (design §5.16): the ``reason`` label of
# ``sentryca_upstream_failures_total``, the adapter's CAError reasons (``adapters.acm_pca``), an
# answer that failed the checks (bundle_invalid), no such Private CA (config_invalid); any other
# counts as ``other``.
UPSTREAM_REASONS = (
    "upstream_pending",
    "upstream_throttled",
    "upstream_unreachable",
    "upstream_denied",
    "upstream_invalid_state",
    "upstream_refused",
    "upstream_other_root",
    "bundle_invalid",
    "config_invalid",
    "other",
)

# Signing takes milliseconds; a slow identity backend (TokenReview, JWKS) takes up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def bounded_reason(reason: str) -> str:
    """``reason`` when it is a short snake_case label, else ``"other"`` (a guard: reasons are
    code-defined, this keeps the label set bounded even if one ever is not)."""
    return reason if _REASON.fullmatch(reason) else "other"


class _NotCounted:
    """Stands for a counter another worker process keeps (see Metrics ``count_shared_events``)."""

    def inc(self, amount: float = 1) -> None:
        pass


class UpstreamMetrics:
    """The upstream authority's figures (design §5.16), registered only on a CA that has one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "sentryca_upstream_failures",
            "Attempts to get an issuer from the upstream authority (--upstream-authority) that got "
            "none, by reason (the CA kept serving its current issuer)",
            ["reason"],
            registry=registry,
        )
        for reason in UPSTREAM_REASONS:
            self.failures.labels(reason=reason)  # every series from the start, at 0
        self.failing = Gauge(
            "sentryca_upstream_failing",
            "1 while an issuer is wanted from the upstream authority and its last attempt got none "
            "(/healthz: 'upstream'), else 0",
            registry=registry,
            multiprocess_mode="livemax",  # with --workers: 1 when any live worker's last attempt failed
        )

    def failed(self, reason: str) -> None:
        self.failures.labels(reason=reason if reason in UPSTREAM_REASONS else "other").inc()
        self.failing.set(1)


class Metrics:
    """The CA's metrics. ``registry`` is private to this instance (tests run several CAs).

    count_shared_events: False in all but one of several worker processes (``--workers``),
    whose counters are summed: events every worker sees alike (the issuer changed, a bundle
    version refused) are then counted once, by the one worker that counts them."""

    def __init__(self, count_shared_events: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sign_received = Counter(
            "dapr_sentry_cert_sign_request_received", "Certificate signing requests received", registry=r
        )
        self.sign_success = Counter(
            "dapr_sentry_cert_sign_success", "Certificates signed successfully", registry=r
        )
        self.jwt_issued = Counter(
            "sentryca_jwt_svids_issued",
            "JWT-SVIDs signed into answers (every token of jwt and per_audience_jwts)",
            registry=r,
        )
        self.rule_matches = Counter(
            "sentryca_validator_rule_matches",
            "Certificates signed, by validator and the rule that proved the identity (JWKS issuer rules)",
            ["validator", "rule"],
            registry=r,
        )
        self.sign_failure = Counter(
            "dapr_sentry_cert_sign_failure",
            "Failed signing requests, by coarse category and fine-grained reason",
            ["category", "reason"],
            registry=r,
        )
        self.sign_latency = Histogram(
            "sentryca_sign_request_duration_seconds",
            "Time to answer a SignCertificate call (seconds), by gRPC status code",
            ["code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.issuer_expiry = Gauge(
            "dapr_sentry_issuercert_expiry_timestamp",
            "Issuer certificate NotAfter (Unix seconds)",
            registry=r,
            multiprocess_mode="livemin",  # with --workers: the least advanced live worker
        )
        self.root_expiry = Gauge(
            "dapr_sentry_rootcert_expiry_timestamp",
            "Earliest trust anchor NotAfter (Unix seconds)",
            registry=r,
            multiprocess_mode="livemin",  # with --workers: the least advanced live worker
        )
        self.coverage_expiry = Gauge(
            "sentryca_signing_coverage_expiry_timestamp",
            "Latest NotAfter among the active and prepared signing chains (Unix seconds; design §9)",
            registry=r,
            multiprocess_mode="livemin",  # with --workers: the least advanced live worker
        )
        self.issuer_changed = Counter(
            "dapr_sentry_issuercert_changed", "Times the issuer certificate changed", registry=r
        )
        self.bundle_change_refused = Counter(
            "sentryca_bundle_change_refused",
            "New bundle versions seen in the store and refused (invalid, or dropping the active root)",
            registry=r,
        )
        self.store_degraded = Gauge(
            "sentryca_store_degraded",
            "1 while the CA's store reads find it empty, unreadable or holding a refused bundle "
            "(the CA serves the bundle in force; /healthz names the problem under 'degraded'), else 0",
            registry=r,
            multiprocess_mode="livemax",  # with --workers: 1 when any live worker is degraded
        )
        self.rotation_steps = Counter(
            "sentryca_rotation_steps",
            "Rotation steps this CA wrote, by kind (root, issuer, jwt) and step (prepare, activate, "
            "prune, rotate, emergency, bound, record)",
            ["kind", "step"],
            registry=r,
        )
        self.servercert_issue_failed = Counter(
            "dapr_sentry_servercert_issue_failed",
            "Failures issuing the CA's own server certificate",
            registry=r,
        )
        self.servercert_renewed = Counter(
            "sentryca_servercert_renewed",
            "Renewals of the CA's own server certificate (at half its lifetime)",
            registry=r,
        )
        self.restarts = Counter(
            "sentryca_restarts",
            "Times a new state was put in force without stopping (a restart, a store change or "
            "rotation step applied; design §8.3)",
            registry=r,
        )
        self.log_lines_suppressed = Counter(
            "sentryca_log_lines_suppressed",
            "Log lines about refused or failed calls dropped by the log rate limit (design §9.4)",
            registry=r,
        )

        self._upstream: UpstreamMetrics | None = None
        self._upstream_lock = threading.Lock()

        if not count_shared_events:
            self.issuer_changed = self.bundle_change_refused = _NotCounted()  # type: ignore[assignment]

    def upstream(self) -> UpstreamMetrics:
        """The upstream authority's metrics, registered at the first call (a CA without
        ``--upstream-authority`` exposes none of them, so its EMF documents carry none)."""
        with self._upstream_lock:
            if self._upstream is None:
                self._upstream = UpstreamMetrics(self.registry)
            return self._upstream

    def count_failure(self, category: str, reason: str) -> None:
        """Count one failed sign request. ``category``: one of CATEGORIES; ``reason``: a code label."""
        if category not in CATEGORIES:
            category = "internal"
        self.sign_failure.labels(category=category, reason=bounded_reason(reason)).inc()

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
