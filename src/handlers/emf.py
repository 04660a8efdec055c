"""The CA's signing figures as CloudWatch Embedded Metric Format (EMF) on stdout (design §9.3).

A deployed task has no scraper: with ``--emf-interval`` set, a thread writes every interval one
JSON document per line to stdout, which the task's log driver sends to its log group, where
CloudWatch Logs turns it into metrics. Nothing is written per request. The figures are read from
the CA's own Prometheus registry (:class:`handlers.metrics.Metrics`), so ``/metrics`` and
CloudWatch never disagree: counters as what they gained since the previous document, gauges as
they stand, the latency histogram as a distribution (``Values``/``Counts``: each bucket's
midpoint and how many calls fell in it since the previous document) from which CloudWatch
computes percentiles across all tasks.

Written here rather than with Powertools' ``Metrics``: that keeps one metric set per process in
class attributes, made for one invocation, has no ``Values``/``Counts`` distribution, and is not
installed in the server image; an EMF document is plain JSON.

Documents, namespace ``SentryCA``, dimension ``service`` (``POWERTOOLS_SERVICE_NAME``, which
the template sets to the stack name, as for the functions):

- dimensions [service]: SignRequests, SignSuccesses, SignFailures, JwtSvidsIssued (Count), SignLatency
  (Milliseconds, a distribution; absent when no call was answered), IssuerDaysLeft,
  ServedCoverageDays (days, from the bundle in force), Restarts, BundleChangesRefused (Count), and
  on a CA with ``--upstream-authority`` UpstreamFailing (1 while an issuer is wanted from it and
  its last attempt got none, else 0; design §5.16);
- dimensions [service, category, reason]: SignFailures, one document per pair that counted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from prometheus_client.metrics_core import Metric

NAMESPACE = "SentryCA"  # the functions' namespace too (handlers.lambda_support.NAMESPACE)
SERVICE_DIMENSION = "service"
DEFAULT_SERVICE = "sentryca"

SIGN_REQUESTS = "SignRequests"
SIGN_SUCCESSES = "SignSuccesses"
SIGN_FAILURES = "SignFailures"
JWT_SVIDS_ISSUED = "JwtSvidsIssued"
SIGN_LATENCY = "SignLatency"
ISSUER_DAYS_LEFT = "IssuerDaysLeft"
SERVED_COVERAGE_DAYS = "ServedCoverageDays"
RESTARTS = "Restarts"
BUNDLE_CHANGES_REFUSED = "BundleChangesRefused"
UPSTREAM_FAILING = "UpstreamFailing"
FAILURE_DIMENSIONS = ("category", "reason")

# EMF metric name -> (Prometheus sample name, unit) for the counters of the main document
COUNTERS = {
    SIGN_REQUESTS: "dapr_sentry_cert_sign_request_received_total",
    SIGN_SUCCESSES: "dapr_sentry_cert_sign_success_total",
    JWT_SVIDS_ISSUED: "sentryca_jwt_svids_issued_total",
    RESTARTS: "sentryca_restarts_total",
    BUNDLE_CHANGES_REFUSED: "sentryca_bundle_change_refused_total",
}
FAILURES = "dapr_sentry_cert_sign_failure_total"
LATENCY = "sentryca_sign_request_duration_seconds"
DAYS = {
    ISSUER_DAYS_LEFT: "dapr_sentry_issuercert_expiry_timestamp",
    SERVED_COVERAGE_DAYS: "sentryca_signing_coverage_expiry_timestamp",
}
UPSTREAM_GAUGE = "sentryca_upstream_failing"  # registered only on a CA with an upstream
DAY = 86400.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def service_name() -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE


def samples(families: Iterable[Metric]) -> Samples:
    """Every sample of ``families`` by (name, sorted labels)."""
    out: Samples = {}
    for family in families:
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _sum(snap: Samples, name: str, **match: str) -> float:
    return sum(
        v for (n, labels), v in snap.items() if n == name and all((k, w) in labels for k, w in match.items())
    )


def _document(metrics: dict[str, tuple[Any, str]], dimensions: dict[str, str], at_ms: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
        **dimensions,
    }
    doc.update({name: value for name, (value, _) in metrics.items()})
    return doc


def latency_distribution(now: Samples, before: Samples) -> dict[str, Any] | None:
    """The calls answered between ``before`` and ``now`` as an EMF distribution in milliseconds
    (all status codes together), or None when there were none."""
    bounds = sorted(
        {float(dict(labels)["le"]) for (n, labels) in now if n == f"{LATENCY}_bucket"} - {float("inf")}
    )
    cumulative = [_bucket(now, b) - _bucket(before, b) for b in (*bounds, float("inf"))]
    count = cumulative[-1] if cumulative else 0.0
    if count <= 0:
        return None
    values, counts = [], []
    lower = 0.0
    for i, upper in enumerate((*bounds, bounds[-1] * 2 if bounds else 1.0)):
        n = cumulative[i] - (cumulative[i - 1] if i else 0.0)
        if n > 0:
            values.append(round((lower + upper) / 2 * 1000, 3))
            counts.append(n)
        lower = upper
    total = _sum(now, f"{LATENCY}_sum") - _sum(before, f"{LATENCY}_sum")
    return {
        "Values": values,
        "Counts": counts,
        "Min": values[0],
        "Max": values[-1],
        "Count": count,
        "Sum": round(total * 1000, 3),
    }


def _bucket(snap: Samples, bound: float) -> float:
    """The calls in the latency buckets up to ``bound`` (all status codes)."""
    return sum(
        v
        for (n, labels), v in snap.items()
        if n == f"{LATENCY}_bucket" and float(dict(labels)["le"]) == bound
    )


def documents(now: Samples, before: Samples, at: float, service: str) -> list[dict[str, Any]]:
    """The EMF documents for what changed from ``before`` to ``now`` at Unix time ``at``."""
    at_ms = int(at * 1000)
    dims = {SERVICE_DIMENSION: service}
    main: dict[str, tuple[Any, str]] = {
        name: (_sum(now, sample) - _sum(before, sample), "Count") for name, sample in COUNTERS.items()
    }
    main[SIGN_FAILURES] = (_sum(now, FAILURES) - _sum(before, FAILURES), "Count")
    latency = latency_distribution(now, before)
    if latency is not None:
        main[SIGN_LATENCY] = (latency, "Milliseconds")
    for name, sample in DAYS.items():
        expiry = _sum(now, sample)
        if expiry > 0:
            main[name] = (round((expiry - at) / DAY, 3), "None")
    failing = [v for (n, _), v in now.items() if n == UPSTREAM_GAUGE]
    if failing:  # the CA has an upstream authority: as the gauge stands (any worker's)
        main[UPSTREAM_FAILING] = (max(failing), "None")
    docs = [_document(main, dims, at_ms)]
    pairs = sorted(
        {tuple(dict(labels)[k] for k in FAILURE_DIMENSIONS) for (n, labels) in now if n == FAILURES}
    )
    for category, reason in pairs:
        gained = _sum(now, FAILURES, category=category, reason=reason) - _sum(
            before, FAILURES, category=category, reason=reason
        )
        if gained > 0:
            failure_dims = {**dims, "category": category, "reason": reason}
            docs.append(_document({SIGN_FAILURES: (gained, "Count")}, failure_dims, at_ms))
    return docs


class EmfWriter:
    """Writes :func:`documents` for ``collect()`` (the metric families) every ``interval``
    seconds on a daemon thread, and once more at :meth:`stop`. One line per document, written
    whole under a lock, to ``out`` (default: ``sys.stdout`` at write time)."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Metric]],
        interval: float,
        *,
        service: str | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collect = collect
        self.interval = interval
        self.service = service or service_name()
        self._out = out
        self._clock = clock
        self._before: Samples = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def flush(self) -> list[dict[str, Any]]:
        """Write the documents for what changed since the previous flush; returns them."""
        with self._lock:
            now = samples(self._collect())
            docs = documents(now, self._before, self._clock(), self.service)
            self._before = now
            out = self._out or sys.stdout
            out.write("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs))
            out.flush()
            return docs

    def start(self) -> EmfWriter:
        self._thread = threading.Thread(target=self._run, name="emf", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - a failed write must not end the CA's metrics
                print(f"EMF metrics not written: {e}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Stop the thread and write what changed since its last document."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
