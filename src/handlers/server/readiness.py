"""What a running CA reports (design §8.5, §9.2–9.5): the readiness behind ``/healthz`` and the
gRPC health service, the expiry check and its gauges, and the publication of a bundle once it is
in force (the store's public part, the bundle gauges, the ``bundle_*`` audit records)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ca_core.bundle import ANCHORS, ISSUER_CHAIN, ROTATION_STATE, fingerprint
from ca_core.certs import check_issuer_valid
from ca_core.errors import FailedPrecondition
from ca_core.expiry import ExpiryFinding, stored_expiry_report
from ca_core.server_certificate import ServerCertificate
from ca_core.validators import validator_readiness

from ..grpc_service import audit_log
from ..metrics import Metrics
from .state import State

expiry_log = logging.getLogger("sentryca.expiry")


def readiness_report(
    state: State | None,
    now: datetime,
    cert: ServerCertificate | None,
    cert_error: str | None,
    grpc_port: int | None,
    degraded: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(ready, details) for ``/healthz`` at ``now``: bundle loaded and issuer valid, server
    certificate ``cert`` issued and unexpired (else ``cert_error``), validators ready, gRPC
    serving (``grpc_port`` None: not serving). Not-ready parts are listed under ``not_ready``.
    ``degraded``: the store's problem while the CA serves the bundle in force (design §8.4),
    reported under ``degraded``; ``upstream``: the upstream authority's state (design §5.16),
    under ``upstream``. Neither makes the CA not ready: it serves its current issuer."""
    if state is None:
        return False, {"ready": False, "ca": "not running"}
    details: dict[str, Any] = {}
    problems = []
    issuer = state.signer.bundle.issuer
    try:
        check_issuer_valid(issuer, now)
        details["issuer"] = f"valid until {issuer.not_valid_after_utc.isoformat()}"
    except FailedPrecondition as e:
        details["issuer"] = str(e)
        problems.append("issuer")
    if cert is None or cert.not_after <= now:
        details["server_certificate"] = cert_error or "expired"
        problems.append("server_certificate")
    else:
        details["server_certificate"] = f"valid until {cert.not_after.isoformat()}"
    details["validators"] = sorted(k.name.lower() for k in state.signer.validators)
    for kind, validator in state.signer.validators.items():
        try:
            ok, detail = validator_readiness(validator)
        except Exception as e:  # noqa: BLE001 - a readiness hook must never break /healthz
            ok, detail = False, f"readiness check failed: {type(e).__name__}"
        if not ok:
            problems.append(f"validator_{kind.name.lower()}")
            details[f"validator_{kind.name.lower()}"] = detail
    if grpc_port is None:
        problems.append("grpc")
        details["grpc"] = "not serving"
    else:
        details["grpc"] = f"serving on port {grpc_port}"
    details["ready"] = not problems
    if problems:
        details["not_ready"] = problems
    if degraded is not None:
        details["degraded"] = degraded
    if upstream is not None:
        details["upstream"] = upstream
    return not problems, details


def check_expiry(state: State, now: datetime, metrics: Metrics) -> list[ExpiryFinding]:
    """The expiry rule over the bundle in force at ``now`` (design §8.5): each finding logged at
    its level on ``sentryca.expiry``, the coverage gauge set. Returns the findings."""
    bundle = state.signer.bundle
    items = {ANCHORS: bundle.anchors_pem, ISSUER_CHAIN: bundle.issuer_chain_pem}
    if state.stored is not None and ROTATION_STATE in state.stored.items:
        items[ROTATION_STATE] = state.stored.items[ROTATION_STATE]
    found = stored_expiry_report(items, now)
    for f in found.findings:
        expiry_log.log(f.level, "%s", f.message, extra={"role": f.role, "days_left": f.days_left})
    if found.coverage_not_after is not None:
        metrics.coverage_expiry.set(found.coverage_not_after.timestamp())
    return found.findings


def publish_public(state: State) -> None:
    """Once a restart accepted ``state`` (trust continuity checked, or forced) and put it in
    force: repair the store's public part from it (design §5.5: relying parties never get the
    anchors of a bundle the CA refused). A bundle created by this restart was published by
    the create itself."""
    if state.stored is not None and not state.created:
        state.store.publish_public(state.stored)


def publish_bundle(state: State, previous: State | None, metrics: Metrics) -> None:
    """Once ``state`` is in force: the bundle's expiry gauges, the issuer-changed counter, and an
    audit record when the bundle was created or changed (at start: ``bundle_loaded``). Fields:
    event, issuer_serial, issuer_not_after, anchors (SHA-256 fingerprints), store, version; on a
    change also previous_issuer_serial."""
    bundle = state.signer.bundle
    issuer = bundle.issuer
    metrics.issuer_expiry.set(issuer.not_valid_after_utc.timestamp())
    metrics.root_expiry.set(min(a.not_valid_after_utc for a in bundle.trust_anchors).timestamp())
    # coverage: set by check_expiry, which runs whenever a state comes into force
    fields: dict[str, Any] = {
        "issuer_serial": f"{issuer.serial_number:x}",
        "issuer_not_after": issuer.not_valid_after_utc.isoformat(),
        "anchors": ",".join(fingerprint(a) for a in bundle.trust_anchors),
        "store": state.store.description,
        "version": state.bundle_version,
    }
    if previous is None:
        event = "bundle_created" if state.created else "bundle_loaded"
    else:
        before = previous.signer.bundle
        if before.issuer == issuer and before.trust_anchors == bundle.trust_anchors:
            return
        if before.issuer != issuer:
            metrics.issuer_changed.inc()
        event = "bundle_changed"
        fields["previous_issuer_serial"] = f"{before.issuer.serial_number:x}"
    audit_log.info(
        "%s: issuer serial %s, %d trust anchor(s), in %s",
        event,
        fields["issuer_serial"],
        len(bundle.trust_anchors),
        state.store.description,
        extra={"event": event, **fields},
    )
