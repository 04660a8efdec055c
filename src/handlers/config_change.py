"""The config-change function (design §1, §5): ``handler(event, context) -> dict``.

Accepted events (samples in ``events/``):

- S3 ``Object Created`` via EventBridge (``source`` aws.s3) and the classic S3 notification
  (``Records[].eventSource`` aws:s3): the bundle object of an ``s3://`` store changed;
- Secrets Manager via CloudTrail (``source`` aws.secretsmanager, ``detail-type`` "AWS API Call
  via CloudTrail"): the bundle secret of a ``secretsmanager://`` store changed;
- SSM ``Parameter Store Change`` (``source`` aws.ssm): the parameter named by
  ``SENTRYCA_CONFIG_PARAMETER`` (a Dapr Configuration YAML, design §7 ``--config``) changed.

Events about anything other than the configured bundle or parameter are ignored. The changed
bundle is loaded from the store and validated with the core (``parse_bundle``: structure, chain,
keys; ``rotation.codec.parse_state``: its rotation state) and for trust continuity against the
store's record of the last accepted bundle (``ca_core.continuity.judge_against_record``, the rule
a starting CA applies; without a record, against the store's previous version). Refused → the
store is put back to the last accepted bundle it still keeps (a conditional write over the
refused version: ``outcome`` "reverted", metric ``BundleReverted``), ERROR log and
``ConfigChangeRejected`` (alarmed); with no accepted version kept, or the store changed
meanwhile, only rejected ("rejected"). A deliberate replacement (``bundle import --force``,
``bundle regenerate``) records itself as accepted, so it is judged accepted, never reverted.
Valid → ``ConfigChangeAccepted``, and the record follows it (``publish_public``). A bundle
change never forces a deployment (design §9.6): the event cannot say who wrote it, and the
tasks take a new bundle through their store poll (``--store-poll-interval``). A changed
parameter is parsed as a Configuration; valid, and with ``SENTRYCA_ECS_CLUSTER`` and
``SENTRYCA_ECS_SERVICE`` set, it rolls the service once (``ecs:UpdateService
forceNewDeployment``, metric ``DeploymentForced``): the tasks read the parameter only at start.

Returns {"outcome": "accepted" | "rejected" | "reverted" | "ignored", "source", "target",
"reason", "deployment"}.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit

from adapters.kms import open_key as open_kms_key
from adapters.stores import parse_stored
from ca_core.bundle import parse_bundle
from ca_core.config import read_config_file
from ca_core.continuity import check_replacement, judge_against_record, matches_record, refusal_message
from ca_core.errors import BundleError, CAError, Unavailable
from ca_core.rotation.codec import parse_state

from . import composition
from . import lambda_support as ls

logger = ls.make_logger("config-change")

# CloudTrail eventNames that change a secret's current value.
SECRET_CHANGES = frozenset({"PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage", "RotateSecret"})


@dataclass(frozen=True)
class Change:
    """What an event says changed. kind: "s3" | "secretsmanager" | "ssm"; source: which event
    form; bucket/key (s3), secret (name or ARN), parameter (name); skip: why it is not a change
    of a current value (or None)."""

    kind: str
    source: str
    bucket: str = ""
    key: str = ""
    secret: str = ""
    parameter: str = ""
    skip: str | None = None


def parse_event(event: dict[str, Any]) -> Change | None:
    """The change an event describes, or None for an event of an unknown shape."""
    if isinstance(event.get("Records"), list) and event["Records"]:
        rec = event["Records"][0]
        if rec.get("eventSource") == "aws:s3" and str(rec.get("eventName", "")).startswith("ObjectCreated"):
            s3 = rec.get("s3", {})
            return Change(
                "s3",
                "s3-notification",
                bucket=s3.get("bucket", {}).get("name", ""),
                key=unquote_plus(s3.get("object", {}).get("key", "")),
            )
        return None
    source, detail = event.get("source"), event.get("detail") or {}
    if source == "aws.s3" and event.get("detail-type") == "Object Created":
        return Change(
            "s3",
            "s3-eventbridge",
            bucket=detail.get("bucket", {}).get("name", ""),
            key=detail.get("object", {}).get("key", ""),
        )
    if source == "aws.secretsmanager" and event.get("detail-type") == "AWS API Call via CloudTrail":
        params = detail.get("requestParameters") or {}
        name = detail.get("eventName", "")
        skip = None
        if name not in SECRET_CHANGES:
            skip = f"{name} does not change the secret's value"
        elif detail.get("errorCode"):
            skip = f"{name} failed ({detail['errorCode']})"
        elif (
            name == "PutSecretValue"
            and params.get("versionStages")
            and ("AWSCURRENT" not in params["versionStages"])
        ):
            skip = "a staged value that is not AWSCURRENT (yet)"
        elif name == "UpdateSecretVersionStage" and params.get("versionStage") != "AWSCURRENT":
            skip = "a version stage other than AWSCURRENT moved"
        return Change(
            "secretsmanager", "secretsmanager-cloudtrail", secret=params.get("secretId", ""), skip=skip
        )
    if source == "aws.ssm" and event.get("detail-type") == "Parameter Store Change":
        skip = "the parameter was deleted" if detail.get("operation") == "Delete" else None
        return Change("ssm", "ssm", parameter=detail.get("name", ""), skip=skip)
    return None


def _same_secret(configured: str, named: str) -> bool:
    """A secret given as a name or ARN on either side (ARNs end in ``:secret:NAME-XXXXXX``)."""
    if configured == named:
        return True
    from adapters.stores.secretsmanager import _name_of

    return _name_of(configured) == _name_of(named)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (``template.yaml``: ConfigChangeFunction). Never raises for a bad
    bundle or configuration (that is a rejection); raises CAError when the store cannot be read,
    so the invocation fails and EventBridge retries it."""
    metrics = ls.make_metrics()
    try:
        return _handle(event, metrics)
    finally:
        with warnings.catch_warnings():  # an ignored event emits nothing, which is fine
            warnings.filterwarnings("ignore", "No application metrics")
            metrics.flush_metrics(raise_on_empty_metrics=False)


def _handle(event: dict[str, Any], metrics: Any) -> dict[str, Any]:
    cfg = ls.config_from_env()
    change = parse_event(event)
    if change is None:
        logger.warning("ignored an event of an unknown shape", extra={"keys": sorted(event)[:10]})
        return _result("ignored", "unknown", "", "unknown event shape")
    store = composition.build_store(cfg)
    target = {
        "s3": f"s3://{change.bucket}/{change.key}",
        "secretsmanager": f"secretsmanager://{change.secret}",
    }
    where = target.get(change.kind, f"ssm:{change.parameter}")
    ours = {
        "s3": where == store.description,
        "secretsmanager": store.description.startswith("secretsmanager://")
        and _same_secret(store.description.removeprefix("secretsmanager://"), change.secret),
        "ssm": bool(change.parameter) and change.parameter == os.environ.get("SENTRYCA_CONFIG_PARAMETER"),
    }[change.kind]
    if not ours:
        logger.info("ignored a change of %s: not this CA's bundle or configuration", where)
        return _result("ignored", change.source, where, "not this CA's bundle or configuration")
    if change.skip:
        logger.info("ignored a change of %s: %s", where, change.skip)
        return _result("ignored", change.source, where, change.skip)
    reverted, stored = None, None
    try:
        if change.kind == "ssm":
            _validate_parameter(change.parameter)
        else:
            stored = store.load()
            try:
                _validate_bundle(store, stored)
            except Unavailable:
                raise
            except CAError:
                if stored is None:  # emptied: nothing to write over (held_before tells the CAs)
                    raise
                # Put back the last accepted bundle; a replacement recorded as deliberate meanwhile
                # (a forced verb records its bundle just after writing it) is accepted instead.
                reverted = _revert(store, stored)
                if reverted is not ACCEPTED:
                    raise
    except Unavailable:
        raise  # the store or SSM cannot be read: fail the invocation (retried), judge nothing
    except CAError as e:
        what = f"; the store was put back to the accepted bundle (version {reverted})" if reverted else ""
        logger.error(
            "config change REJECTED (%s): %s%s; nothing restarted, the CAs keep serving their current bundle",
            where,
            e,
            what,
            extra={"reason": e.reason, "source": change.source, "reverted": reverted},
        )
        metrics.add_metric(name=ls.CONFIG_CHANGE_REJECTED, unit=MetricUnit.Count, value=1)
        if reverted:
            metrics.add_metric(name=ls.BUNDLE_REVERTED, unit=MetricUnit.Count, value=1)
        return _result("reverted" if reverted else "rejected", change.source, where, str(e))
    metrics.add_metric(name=ls.CONFIG_CHANGE_ACCEPTED, unit=MetricUnit.Count, value=1)
    deployment = None
    if change.kind == "ssm":  # the tasks read the parameter only at start: roll them, once
        deployment = _force_new_deployment()
        if deployment:
            metrics.add_metric(name=ls.DEPLOYMENT_FORCED, unit=MetricUnit.Count, value=1)
    elif stored is not None:  # never a deployment for a bundle (the tasks poll); the record follows
        store.publish_public(stored)
    logger.info(
        "config change accepted (%s)", where, extra={"source": change.source, "deployment": deployment}
    )
    return _result("accepted", change.source, where, "valid", deployment)


def _validate_bundle(store: Any, stored: Any) -> None:
    """Check the store's current bundle ``stored``: structure, rotation state, and trust
    continuity against the store's record of the last accepted bundle (design §5.4), or, for a
    store without a record, against its previous version when it keeps one. Raises BundleError,
    Unavailable."""
    if stored is None:
        raise BundleError(f"{store.description} holds no trust bundle any more")
    new = parse_bundle(stored.items, store.labels(), open_key=open_kms_key)
    parse_state(stored.items, new, store.labels(), open_key=open_kms_key)
    try:
        record = store.load_accepted()
    except BundleError as e:
        logger.warning("the record of the accepted bundle in %s is unreadable (%s)", store.description, e)
        record = None
    if record is not None:
        verdict = judge_against_record(record.items, new, stored.items, datetime.now(UTC))
        if not verdict.allowed:
            raise BundleError(refusal_message(verdict, store.description))
        return
    load_previous = getattr(store, "load_previous", None)
    previous = load_previous() if load_previous else None
    if previous is None:
        logger.info(
            "no record and no previous bundle version in %s: nothing to check continuity against",
            store.description,
        )
        return
    try:
        old = parse_bundle(previous.items, store.labels(), open_key=open_kms_key)
    except CAError as e:
        logger.warning(
            "the previous bundle version in %s is unusable (%s); continuity not checked", store.description, e
        )
        return
    check_replacement(old, previous.items, new, stored.items, datetime.now(UTC), store.description)


ACCEPTED = "accepted"  # _revert's answer for a refused bundle recorded as deliberate meanwhile


def _revert(store: Any, refused: Any) -> str | None:
    """Put ``store`` back to the last accepted bundle it keeps (``find_accepted`` of its record),
    only over the ``refused`` version (a conditional write). Returns the version put back;
    ACCEPTED when the record, read again, now names the refused bundle (a deliberate
    replacement recorded meanwhile); None when there is no record or accepted version kept, or
    the store changed meanwhile (the next event judges that). Raises Unavailable."""
    try:
        record = store.load_accepted()
    except BundleError:
        return None
    if record is None:
        return None
    if matches_record(record.items, refused.items):
        try:
            _validate_bundle(store, refused)  # recorded meanwhile; still refused when its keys are bad
            return ACCEPTED
        except CAError:
            pass
    accepted = store.find_accepted(record.items)
    if accepted is not None:
        try:
            parse_stored(store, accepted)
        except CAError:
            accepted = None
    if accepted is None:
        logger.warning("%s keeps no usable copy of the last accepted bundle: not reverted", store.description)
        return None
    if store.replace_version(accepted.items, refused.version) is None:
        logger.warning("%s changed while being reverted: left as it is", store.description)
        return None
    return str(accepted.version)


def _validate_parameter(name: str) -> None:
    """Read the SSM parameter and parse it as a Dapr Configuration. Raises ConfigError, Unavailable."""
    from adapters import aws

    try:
        value = aws.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except aws.sdk_errors() as e:
        raise aws.unavailable(e, f"ssm:{name}", "read the configuration parameter") from None
    read_config_file(value, f"ssm:{name}")


def _force_new_deployment() -> str | None:
    """``ecs:UpdateService forceNewDeployment`` on SENTRYCA_ECS_CLUSTER/SENTRYCA_ECS_SERVICE when
    both are set; returns the new deployment's id (or "forced"), None when not configured.
    Raises Unavailable."""
    cluster = os.environ.get("SENTRYCA_ECS_CLUSTER")
    service = os.environ.get("SENTRYCA_ECS_SERVICE")
    if not cluster or not service:
        return None
    from adapters import aws

    try:
        r = aws.client("ecs").update_service(cluster=cluster, service=service, forceNewDeployment=True)
    except aws.sdk_errors() as e:
        raise aws.unavailable(e, f"ecs service {service}", "force a new deployment") from None
    deployments = r.get("service", {}).get("deployments") or [{}]
    return str(deployments[0].get("id") or "forced")


def _result(
    outcome: str, source: str, target: str, reason: str, deployment: str | None = None
) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "source": source,
        "target": target,
        "reason": reason,
        "deployment": deployment,
    }
