"""What the Lambda handlers share: Powertools Logger and Metrics (CloudWatch EMF) set up the same
way, the configuration from ``SENTRY_*`` environment variables (design §7), and the metric names and
dimensions that ``template.yaml``'s alarms refer to (a test checks the two agree).

Imports stay light: Powertools, the pure core and the store adapters (boto3 lazily); never
``grpc``, and ``kubernetes`` only when a ``kubernetes://`` store is configured.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from ca_core.config import Config, load_config

# The CloudWatch namespace of every metric the functions emit (template.yaml's alarms use it).
NAMESPACE = "SentryCA"
# The one dimension every alarmed metric carries: Powertools' ``service`` (POWERTOOLS_SERVICE_NAME,
# which template.yaml sets to the stack name).
SERVICE_DIMENSION = "service"
DEFAULT_SERVICE = "sentryca"

# Metric names (EMF), alarmed ones first.
COVERAGE_RATIO = "SigningCoverageRatio"  # dims: service; the alarm fires below 1
COVERAGE = "SigningCoverageDays"  # dims: service
DAYS_TO_EXPIRY = "DaysToExpiry"  # dims: service, Role, Subject (one series per certificate)
EXPIRY_CHECK_FAILED = "ExpiryCheckFailed"  # dims: service
CONFIG_CHANGE_REJECTED = "ConfigChangeRejected"  # dims: service
CONFIG_CHANGE_ACCEPTED = "ConfigChangeAccepted"  # dims: service
DEPLOYMENT_FORCED = "DeploymentForced"  # dims: service
BUNDLE_REVERTED = "BundleReverted"  # dims: service (a refused bundle put back to the accepted one)


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is at write time (Lambda's log capture,
    or a test's)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def service_name() -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE


def make_logger(name: str) -> Logger:
    """A Powertools JSON logger for one handler module (level from POWERTOOLS_LOG_LEVEL or
    SENTRY_LOG_LEVEL, default INFO)."""
    level = os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("SENTRY_LOG_LEVEL") or "INFO"
    return Logger(service=f"{service_name()}.{name}", level=level.upper(), stream=_CurrentStdout())  # type: ignore[arg-type]


def make_metrics() -> Metrics:
    """EMF metrics in NAMESPACE with the ``service`` dimension, for one invocation (flush it)."""
    return Metrics(namespace=NAMESPACE, service=service_name())


def config_from_env(environ: dict[str, str] | None = None) -> Config:
    """The CA's configuration from ``SENTRY_*`` variables (design §7). Raises ConfigError."""
    return load_config({}, dict(os.environ if environ is None else environ))


def request_id(context: Any) -> str:
    return str(getattr(context, "aws_request_id", "") or "")
