"""Prometheus metrics with Dapr Sentry's names (SPEC §9), one registry per CA instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """The CA's metrics. ``registry`` is private to this instance (tests run several CAs)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sign_received = Counter(
            "dapr_sentry_cert_sign_request_received", "Certificate signing requests received", registry=r
        )
        self.sign_success = Counter(
            "dapr_sentry_cert_sign_success", "Certificates signed successfully", registry=r
        )
        self.sign_failure = Counter(
            "dapr_sentry_cert_sign_failure", "Failed signing requests, by reason", ["reason"], registry=r
        )
        self.issuer_expiry = Gauge(
            "dapr_sentry_issuercert_expiry_timestamp",
            "Issuer certificate NotAfter (Unix seconds)",
            registry=r,
        )
        self.root_expiry = Gauge(
            "dapr_sentry_rootcert_expiry_timestamp",
            "Earliest trust anchor NotAfter (Unix seconds)",
            registry=r,
        )
        self.coverage_expiry = Gauge(
            "sentryca_signing_coverage_expiry_timestamp",
            "Latest NotAfter among the active and prepared signing chains (Unix seconds; SPEC §9)",
            registry=r,
        )
        self.issuer_changed = Counter(
            "dapr_sentry_issuercert_changed", "Times the issuer certificate changed", registry=r
        )
        self.bundle_change_refused = Counter(
            "sentryca_bundle_change_refused",
            "New bundle versions seen in the store and refused (invalid, or dropping the active root)",
            registry=r,
        )
        self.servercert_issue_failed = Counter(
            "dapr_sentry_servercert_issue_failed",
            "Failures issuing the CA's own server certificate",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
