"""The scheduled expiry check (design §8, §9): ``handler(event, context) -> dict``.

Reads only the public part (``ca.crt``, ``issuer.crt``) of the store named by
``SENTRY_TRUST_BUNDLE_STORE`` (or ``SENTRY_ISSUER_CREDENTIALS``), logs each finding with the
level and wording of design §8.5 (``ca_core.expiry``, the same rule as the server's watcher), and emits
EMF metrics in namespace ``SentryCA``:

- ``DaysToExpiry`` (days; dimensions service, Role, Subject), one per trust anchor and the issuer;
- ``SigningCoverageDays`` (days; dimension service): days until the latest NotAfter among the
  active and prepared signing chains (the prepared ones as the public ``rotation.json`` records
  them: no key is read);
- ``SigningCoverageRatio`` (dimension service): that coverage over the coverage the bundle's
  lifetimes call for (``ca_core.expiry.coverage_alarm_within``: min(30 days, a third of the
  active issuer's lifetime)); the template's alarm fires below 1 (for a one-year issuer: below 30
  days of coverage);
- ``ExpiryCheckFailed`` (count; dimension service) when the store cannot be read or is empty;
  the invocation then raises, so the function's Errors metric also counts it.

Returns a JSON-serialisable summary: store, version, checked_at, status (ok | warning | error),
coverage_days, coverage_not_after, coverage_alarm_below_days, coverage_short, certificates [{role,
subject, not_after, days_left, level, message}].
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from ca_core.errors import BundleError, CAError
from ca_core.expiry import ExpiryReport, stored_expiry_report

from . import composition
from . import lambda_support as ls

logger = ls.make_logger("expiry-check")

_STATUS = {logging.DEBUG: "ok", logging.INFO: "ok", logging.WARNING: "warning", logging.ERROR: "error"}


def handler(event: dict[str, Any], context: Any, now: datetime | None = None) -> dict[str, Any]:
    """The Lambda entry point (``template.yaml``: ExpiryCheckFunction). ``event``: the
    EventBridge Scheduler payload (ignored beyond logging its id); ``now``: for tests.
    Raises CAError when the configuration or the store is unusable (after emitting
    ExpiryCheckFailed)."""
    metrics = ls.make_metrics()
    now = now or datetime.now(UTC)
    try:
        cfg = ls.config_from_env()
        store = composition.build_store(cfg)
        stored = store.load_public()
        if stored is None:
            raise BundleError(f"{store.description} holds no public trust bundle part to check")
    except CAError as e:
        logger.error("expiry check failed: %s", e, extra={"reason": e.reason})
        metrics.add_metric(name=ls.EXPIRY_CHECK_FAILED, unit=MetricUnit.Count, value=1)
        metrics.flush_metrics()
        raise
    report = stored_expiry_report(stored.items, now)
    summary = summarize(report, store.description, stored.version)
    for finding, item in zip(report.findings, summary["certificates"], strict=True):
        _log(finding.level, finding.message, role=finding.role, days_left=item["days_left"])
        if finding.days_left is not None:
            with single_metric(
                name=ls.DAYS_TO_EXPIRY,
                unit=MetricUnit.NoUnit,
                value=round(finding.days_left, 3),
                namespace=ls.NAMESPACE,
                default_dimensions={ls.SERVICE_DIMENSION: ls.service_name()},
            ) as m:
                m.add_dimension(name="Role", value=finding.role)
                m.add_dimension(name="Subject", value=finding.subject[:250] or "-")
    if report.coverage_not_after is None:
        logger.error("no signing chain in %s verifies to a trust anchor: coverage 0 days", store.description)
    metrics.add_metric(name=ls.COVERAGE, unit=MetricUnit.NoUnit, value=round(report.coverage_days, 3))
    metrics.add_metric(name=ls.COVERAGE_RATIO, unit=MetricUnit.NoUnit, value=round(report.coverage_ratio, 3))
    metrics.flush_metrics()
    logger.info("expiry check done", extra={k: v for k, v in summary.items() if k != "certificates"})
    return summary


def summarize(report: ExpiryReport, store: str, version: str) -> dict[str, Any]:
    """The JSON summary of one check (see the module docstring)."""
    return {
        "store": store,
        "version": version,
        "checked_at": report.now.isoformat(),
        "status": _STATUS.get(report.level, "error"),
        "coverage_days": round(report.coverage_days, 3),
        "coverage_not_after": report.coverage_not_after.isoformat() if report.coverage_not_after else None,
        "coverage_alarm_below_days": round(report.alarm_within.total_seconds() / 86400, 3),
        "coverage_short": report.coverage_short,
        "certificates": [
            {
                "role": f.role,
                "subject": f.subject,
                "not_after": f.not_after.isoformat() if f.not_after else None,
                "days_left": None if f.days_left is None else round(f.days_left, 3),
                "level": logging.getLevelName(f.level).lower(),
                "message": f.message,
            }
            for f in report.findings
        ],
    }


def _log(level: int, message: str, **fields: Any) -> None:
    log = {logging.ERROR: logger.error, logging.WARNING: logger.warning, logging.INFO: logger.info}
    log.get(level, logger.debug)("%s", message, extra=fields)
