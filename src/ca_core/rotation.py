"""Root and issuer rotation without downtime (SPEC §5): a pure state machine.

Inputs are the bundle in force, its rotation state, ``now`` and a :class:`RotationPolicy`; the
output is the next bundle and state plus the steps taken (:class:`Rotation`), or None when there
is nothing to do. No clock, environment or I/O here (new keys come from the OS's randomness, as
in :func:`bundle.generate_bundle`): the CLI and the server's upkeep call these functions and
write the result with ``store.replace(items, expected_version)``, so with several replicas one
writer wins each step and the others load its bundle.

Slots (after SPIRE's CA manager): for the root, the **active** root (the anchor the issuer chain
verifies to), at most one **prepared** root (already in the trust anchors, so relying parties
learn it; its issuer and both keys are kept only in the secret state), and **retiring** roots
(former active roots still trusted by the leaves they covered). For the issuer, the **active**
issuer (``issuer.crt``/``issuer.key``) and at most one **prepared** issuer under the active root.

Rules, in the order :func:`advance` applies them (one call applies every step that is due):

0. **Bound**: ``leaf_bound`` is how long after an issuer stops being active a leaf it signed
   may still be valid: workload TTL + clock skew + how long a CA may go on signing with a
   superseded issuer (``ca_core.policy.rotation_policy``: the store poll interval, or without
   polling the expiry-check interval). The state records the longest bound any writer used
   (``leaf_bound``); whoever acts on it (a CA or the CLI, each with its own settings) uses the
   larger of its own and the recorded one. When a root rotation is in progress and this
   writer's bound is longer than the recorded one, it records its own and pushes each retiring
   root's ``prune_after`` to at least ``since + leaf_bound``.
1. **Prune** a retiring root once ``now >= prune_after`` or the root itself has expired.
   ``prune_after`` is fixed at activation: ``min(activated + leaf_bound, old chain NotAfter +
   clock skew)`` (rule 0 may only push it later). Every leaf the old root covers was issued
   before the last CA noticed the activation, so it has expired by then.
2. **Activate** a prepared root once ``now >= activate_after`` (at once when the active signing
   chain has expired: nothing could be signed otherwise): its issuer and keys become the active
   ones, the old root starts retiring, a prepared issuer (under the old root) is dropped.
3. **Activate** a prepared issuer once ``now >= activate_after`` (or the active chain expired).
4. With the automatic policy only, and only for a root whose key the CA holds (it generated the
   root, or was given the key; a bundle imported without it is the operator's PKI): **prepare**
   a root when less than ``min(lifetime/2, 30 days)`` of the active root remains;
   ``activate_after = max(now + propagation window, NotAfter - min(lifetime/6, 7 days))``.
5. Likewise **prepare** an issuer under the active root when less than ``min(lifetime/2, 30
   days)`` of the active issuer remains and a new one would end later (an issuer never outlives
   its root, so with the default equal lifetimes the root's rotation renews the issuer);
   ``activate_after = NotAfter - min(lifetime/6, 7 days)``.

Operator actions: :func:`rotate_issuer` (a new active issuer at once: generated with the root
key, or supplied), :func:`prepare_root` (``activate_after = now + propagation window``) and
:func:`emergency_root` (a new root and issuer active at once; every other anchor removed).

The state (``rotation.json``, :func:`encode_state`) is a JSON object, format 1::

    {"format": 1,
     "root": {"active": {"sha256": FP, "since": T},
              "prepared": {"sha256": FP, "subject": S, "not_after": T, "since": T,
                           "activate_after": T, "trigger": "manual"|"auto",
                           "key": PEM, "issuer_chain": PEM, "issuer_key": PEM} | null,
              "retiring": [{"sha256": FP, "subject": S, "since": T, "prune_after": T}],
              "removed": [{"sha256": FP, "subject": S, "at": T,
                           "reason": "pruned"|"expired"|"emergency"}],
              "leaf_bound_seconds": N},
     "issuer": {"active": {"serial": HEX, "since": T},
                "prepared": {"serial": HEX, "subject": S, "root": FP, "not_after": T, "since": T,
                             "activate_after": T, "trigger": ..., "issuer_chain": PEM,
                             "issuer_key": PEM} | null}}

FP: SHA-256 fingerprint (hex) of a certificate; T: ISO 8601 UTC. A prepared root's certificate
is the anchor with that fingerprint. ``not_after`` of a prepared chain is the earliest NotAfter of
its certificates (what signing coverage counts). The public part of a store carries the same
document without ``key``, ``issuer_chain`` and ``issuer_key`` (:func:`public_items`), so the
expiry function can count prepared chains without any key. ``removed`` keeps the last
:data:`REMOVED_HISTORY` roots. Trust continuity (:func:`released_roots`) accepts a bundle
dropping the active root only when the CURRENT state scheduled its pruning and the time has
come, when it has expired, or when the new state records its emergency removal together with
the new active root since then; a ``removed`` entry alone releases nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from .bundle import (
    ROTATION_STATE,
    TrustBundle,
    certificates_pem,
    chain_not_after,
    fingerprint,
    is_ca,
    issued_by,
    parse_certificates,
)
from .certs import (
    DEFAULT_CA_LIFETIME,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_WORKLOAD_TTL,
    generate_issuer,
    generate_root,
)
from .durations import format_duration
from .errors import BundleError, FailedPrecondition
from .keys import KeyAlgorithm, PrivateKey, load_private_key, private_key_pem, public_key_der
from .rotation_document import FORMAT, load_document
from .rotation_document import SECRET_FIELDS as SECRET_FIELDS  # re-exported
from .rotation_document import prepared_not_after as prepared_not_after  # re-exported
from .rotation_document import public_items as public_items  # re-exported
from .rotation_document import public_state as public_state  # re-exported
from .rotation_document import released_roots as released_roots  # re-exported
from .spiffe_id import SpiffeId

PREPARE_WITHIN = timedelta(days=30)  # prepare when less than min(lifetime/2, this) remains
ACTIVATE_WITHIN = timedelta(days=7)  # activate when less than min(lifetime/6, this) remains
DEFAULT_PROPAGATION_WINDOW = timedelta(hours=24)
REMOVED_HISTORY = 16
MANUAL, AUTO = "manual", "auto"


# --- the state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRoot:
    """A root added to the trust anchors ahead of use, with the issuer it will sign with."""

    root: x509.Certificate
    root_key: PrivateKey
    issuer_chain: tuple[x509.Certificate, ...]
    issuer_key: PrivateKey
    since: datetime
    activate_after: datetime
    trigger: str

    @property
    def not_after(self) -> datetime:
        """When this chain stops being usable: its earliest NotAfter."""
        return chain_not_after((*self.issuer_chain, self.root))


@dataclass(frozen=True)
class PreparedIssuer:
    """An issuer under the active root, ready to take over at ``activate_after``."""

    issuer_chain: tuple[x509.Certificate, ...]
    issuer_key: PrivateKey
    root: x509.Certificate
    since: datetime
    activate_after: datetime
    trigger: str

    @property
    def not_after(self) -> datetime:
        return chain_not_after((*self.issuer_chain, self.root))


@dataclass(frozen=True)
class RetiringRoot:
    """A former active root kept in the anchors until ``prune_after``."""

    sha256: str
    subject: str
    since: datetime
    prune_after: datetime


@dataclass(frozen=True)
class RemovedRoot:
    """A root the rotation removed from the anchors: ``reason`` pruned | expired | emergency."""

    sha256: str
    subject: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class RotationState:
    """The rotation state of one bundle (``rotation.json``). ``root_since``/``issuer_since``:
    when the active root/issuer became active (None when not known: a bundle that never rotated)."""

    root_since: datetime | None = None
    issuer_since: datetime | None = None
    prepared_root: PreparedRoot | None = None
    prepared_issuer: PreparedIssuer | None = None
    retiring: tuple[RetiringRoot, ...] = ()
    removed: tuple[RemovedRoot, ...] = ()
    leaf_bound: timedelta | None = None  # the longest leaf bound any writer used (rule 0)


EMPTY = RotationState()


@dataclass(frozen=True)
class RotationPolicy:
    """How rotations are made (from the configuration; see ``ca_core.policy.rotation_policy``).

    trust_domain / ca_identity: names of generated roots (O=) and issuers (O=); auto: the
    automatic policy starts rotations (steps of a rotation in progress are taken regardless);
    propagation_window: how long a prepared root is in the anchors before its issuer becomes
    active after a manual ``rotate root`` (and at least that long after an automatic one);
    leaf_bound: how long after an issuer stops being active a leaf it signed may still be valid
    (workload TTL + clock skew + how long a CA may still sign with it: the store poll interval,
    or the expiry-check interval without polling; module docstring, rule 0); clock_skew:
    backdating of generated certificates; algorithm, root_lifetime, issuer_lifetime: of
    generated keys and certificates.
    """

    trust_domain: str = "localhost"
    ca_identity: SpiffeId = field(default_factory=lambda: SpiffeId("localhost", "default", "dapr-sentry"))
    auto: bool = False
    propagation_window: timedelta = DEFAULT_PROPAGATION_WINDOW
    leaf_bound: timedelta = DEFAULT_WORKLOAD_TTL + DEFAULT_CLOCK_SKEW
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    root_lifetime: timedelta = DEFAULT_CA_LIFETIME
    issuer_lifetime: timedelta = DEFAULT_CA_LIFETIME


@dataclass(frozen=True)
class Step:
    """One rotation step: kind root | issuer; action bound | prepare | activate | prune | rotate |
    emergency; trigger manual | auto; a log line; audit fields (fingerprints, serials, times)."""

    kind: str
    action: str
    trigger: str
    message: str
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Rotation:
    """The outcome of rotation steps: the new bundle, its state and the steps taken."""

    bundle: TrustBundle
    state: RotationState
    steps: tuple[Step, ...]

    def items(self) -> dict[str, bytes]:
        """The store items of the new bundle, ``rotation.json`` included."""
        return {**self.bundle.to_items(), ROTATION_STATE: encode_state(self.state, self.bundle)}


# --- rules ---------------------------------------------------------------------------------


def margins(cert: x509.Certificate) -> tuple[timedelta, timedelta]:
    """(prepare, activate) margins of ``cert``: ``min(lifetime/2, 30 d)``, ``min(lifetime/6, 7 d)``,
    lifetime = NotAfter - NotBefore."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return min(lifetime / 2, PREPARE_WITHIN), min(lifetime / 6, ACTIVATE_WITHIN)


def active_root(bundle: TrustBundle) -> x509.Certificate:
    """The anchor the issuer chain verifies to (parse_bundle guarantees there is one)."""
    root = bundle.anchor_for(bundle.issuer_chain[-1])
    if root is None:  # pragma: no cover - parse_bundle refuses such a bundle
        raise BundleError("the issuer chain does not verify to any trust anchor")
    return root


def _chain_not_after(bundle: TrustBundle) -> datetime:
    return chain_not_after((*bundle.issuer_chain, active_root(bundle)))


def _root_key(bundle: TrustBundle) -> PrivateKey | None:
    """The active root's key when the bundle holds it (``root.key`` may belong to another anchor
    in an imported bundle), else None."""
    key = bundle.root_key
    if key is None:
        return None
    root_public = active_root(bundle).public_key()
    return key if public_key_der(key.public_key()) == public_key_der(root_public) else None  # type: ignore[arg-type]


def _anchor(bundle: TrustBundle, sha256: str) -> x509.Certificate | None:
    return next((a for a in bundle.trust_anchors if fingerprint(a) == sha256), None)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _iso(t: datetime) -> str:
    return t.isoformat()


def advance(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Rotation | None:
    """Every rotation step due at ``now`` (rules 1-5 of the module docstring), or None.

    bundle: the bundle in force; state: its rotation state (:func:`parse_state`); now: aware
    UTC. Never raises for a due step it cannot take (e.g. no root key): it is simply not taken.
    """
    steps: list[Step] = []
    for _ in range(8):  # each rule changes the state so that it no longer applies
        taken = _next_step(bundle, state, now, policy)
        if taken is None:
            break
        bundle, state, step = taken
        state = _recorded(state, policy)  # a step taken here used this writer's bound
        steps.append(step)
    return Rotation(bundle, state, tuple(steps)) if steps else None


def _next_step(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
    for rule in (
        _raise_bound,
        _prune,
        _activate_root,
        _activate_issuer,
        _auto_prepare_root,
        _auto_prepare_issuer,
    ):
        taken = rule(bundle, state, now, policy)
        if taken is not None:
            return taken
    return None


def _leaf_bound(state: RotationState, policy: RotationPolicy) -> timedelta:
    """The bound to act on: the longer of this writer's and the one the state records."""
    return max(policy.leaf_bound, state.leaf_bound or timedelta(0))


def _recorded(state: RotationState, policy: RotationPolicy) -> RotationState:
    """``state`` recording this writer's leaf bound when it is the longest yet."""
    bound = _leaf_bound(state, policy)
    return state if state.leaf_bound == bound else replace(state, leaf_bound=bound)


def _raise_bound(bundle, state, now, policy):
    recorded = state.leaf_bound or timedelta(0)
    if policy.leaf_bound <= recorded or (state.prepared_root is None and not state.retiring):
        return None
    retiring = tuple(
        replace(r, prune_after=max(r.prune_after, r.since + policy.leaf_bound)) for r in state.retiring
    )
    later = [r for r, was in zip(retiring, state.retiring, strict=True) if r.prune_after != was.prune_after]
    was = format_duration(recorded) if state.leaf_bound is not None else "none"
    effect = (
        "retiring roots now stay until " + ", ".join(f"{r.subject} {_iso(r.prune_after)}" for r in later)
        if later
        else "the next activation keeps the old root that long"
    )
    step = Step(
        "root",
        "bound",
        AUTO,
        f"root rotation: recorded this writer's leaf bound (workload TTL + clock skew + store poll or "
        f"expiry-check interval), {format_duration(policy.leaf_bound)}, longer than the one recorded "
        f"({was}); {effect}",
        {
            "leaf_bound_seconds": str(_seconds(policy.leaf_bound)),
            "previous_seconds": "" if state.leaf_bound is None else str(_seconds(recorded)),
        },
    )
    return bundle, replace(state, leaf_bound=policy.leaf_bound, retiring=retiring), step


def _prune(bundle, state, now, policy):
    active = fingerprint(active_root(bundle))
    for retiring in state.retiring:
        cert = _anchor(bundle, retiring.sha256)
        if cert is None or retiring.sha256 == active:
            continue  # dropped from the state by parse_state; never prune the active root
        expired = now >= cert.not_valid_after_utc
        if now < retiring.prune_after and not expired:
            continue
        reason = "expired" if expired and now < retiring.prune_after else "pruned"
        anchors = tuple(a for a in bundle.trust_anchors if a is not cert)
        new_bundle = replace(bundle, trust_anchors=anchors)
        new_state = replace(
            state,
            retiring=tuple(r for r in state.retiring if r is not retiring),
            removed=_remember(state.removed, RemovedRoot(retiring.sha256, retiring.subject, now, reason)),
        )
        step = Step(
            "root",
            "prune",
            AUTO,
            f"root rotation: removed the retired root {retiring.subject} from the trust anchors "
            f"({'it expired' if reason == 'expired' else 'every leaf it covered has expired'})",
            {"root": retiring.sha256, "subject": retiring.subject, "reason": reason},
        )
        return new_bundle, new_state, step
    return None


def _remember(removed: tuple[RemovedRoot, ...], *more: RemovedRoot) -> tuple[RemovedRoot, ...]:
    return (*removed, *more)[-REMOVED_HISTORY:]


def _activate_root(bundle, state, now, policy):
    prepared = state.prepared_root
    if prepared is None or (now < prepared.activate_after and now < _chain_not_after(bundle)):
        return None
    old = active_root(bundle)
    prune_after = min(now + _leaf_bound(state, policy), _chain_not_after(bundle) + policy.clock_skew)
    new_bundle = TrustBundle(
        bundle.trust_anchors, prepared.issuer_chain, prepared.issuer_key, prepared.root_key
    )
    new_state = replace(
        state,
        root_since=now,
        issuer_since=now,
        prepared_root=None,
        prepared_issuer=None,  # it chains to the old root
        retiring=(*state.retiring, RetiringRoot(fingerprint(old), _subject(old), now, prune_after)),
    )
    early = now < prepared.activate_after
    step = Step(
        "root",
        "activate",
        prepared.trigger,
        f"root rotation: the prepared root {_subject(prepared.root)} is now active with issuer serial "
        f"{prepared.issuer_chain[0].serial_number:x}"
        + (" (early: the active signing chain expired)" if early else "")
        + f"; the old root {_subject(old)} stays in the trust anchors until {_iso(prune_after)}",
        {
            "root": fingerprint(prepared.root),
            "subject": _subject(prepared.root),
            "issuer_serial": f"{prepared.issuer_chain[0].serial_number:x}",
            "retiring_root": fingerprint(old),
            "prune_after": _iso(prune_after),
        },
    )
    return new_bundle, new_state, step


def _activate_issuer(bundle, state, now, policy):
    prepared = state.prepared_issuer
    if prepared is None or (now < prepared.activate_after and now < _chain_not_after(bundle)):
        return None
    new_bundle = replace(bundle, issuer_chain=prepared.issuer_chain, issuer_key=prepared.issuer_key)
    new_state = replace(state, issuer_since=now, prepared_issuer=None)
    issuer = prepared.issuer_chain[0]
    step = Step(
        "issuer",
        "activate",
        prepared.trigger,
        f"issuer rotation: issuer serial {issuer.serial_number:x} ({_subject(issuer)}) is now active, "
        f"valid until {_iso(issuer.not_valid_after_utc)}",
        {
            "issuer_serial": f"{issuer.serial_number:x}",
            "previous_issuer_serial": f"{bundle.issuer.serial_number:x}",
            "not_after": _iso(issuer.not_valid_after_utc),
        },
    )
    return new_bundle, new_state, step


def _auto_prepare_root(bundle, state, now, policy):
    if not policy.auto or state.prepared_root is not None or _root_key(bundle) is None:
        return None
    root = active_root(bundle)
    prepare_within, _ = margins(root)
    if now < root.not_valid_after_utc - prepare_within:
        return None
    return _prepare_root(bundle, state, now, policy, AUTO)


def _auto_prepare_issuer(bundle, state, now, policy):
    root_key = _root_key(bundle)
    if not policy.auto or state.prepared_issuer is not None or root_key is None:
        return None
    root, issuer = active_root(bundle), bundle.issuer
    if not root.not_valid_before_utc <= now < root.not_valid_after_utc:
        return None
    prepare_within, activate_within = margins(issuer)
    if now < issuer.not_valid_after_utc - prepare_within:
        return None
    if min(now + policy.issuer_lifetime, root.not_valid_after_utc) <= issuer.not_valid_after_utc:
        return None  # a new issuer would not outlive this one: the root's rotation renews it
    key = policy.algorithm.generate()
    cert = generate_issuer(
        root,
        root_key,
        key,
        policy.ca_identity,
        now,
        lifetime=policy.issuer_lifetime,
        backdate=policy.clock_skew,
    )
    activate_after = max(now, issuer.not_valid_after_utc - activate_within)
    prepared = PreparedIssuer((cert,), key, root, now, activate_after, AUTO)
    step = Step(
        "issuer",
        "prepare",
        AUTO,
        f"issuer rotation: prepared issuer serial {cert.serial_number:x} (valid until "
        f"{_iso(cert.not_valid_after_utc)}); it becomes active at {_iso(activate_after)}",
        {
            "issuer_serial": f"{cert.serial_number:x}",
            "not_after": _iso(cert.not_valid_after_utc),
            "activate_after": _iso(activate_after),
        },
    )
    return bundle, replace(state, prepared_issuer=prepared), step


def _generate_root_and_issuer(
    now: datetime, policy: RotationPolicy
) -> tuple[x509.Certificate, PrivateKey, x509.Certificate, PrivateKey]:
    root_key = policy.algorithm.generate()
    root = generate_root(
        policy.trust_domain, root_key, now, lifetime=policy.root_lifetime, backdate=policy.clock_skew
    )
    issuer_key = policy.algorithm.generate()
    issuer = generate_issuer(
        root,
        root_key,
        issuer_key,
        policy.ca_identity,
        now,
        lifetime=policy.issuer_lifetime,
        backdate=policy.clock_skew,
    )
    return root, root_key, issuer, issuer_key


def _prepare_root(bundle, state, now, policy, trigger):
    root, root_key, issuer, issuer_key = _generate_root_and_issuer(now, policy)
    activate_after = now + policy.propagation_window
    if trigger == AUTO:
        current = active_root(bundle)
        activate_after = max(activate_after, current.not_valid_after_utc - margins(current)[1])
    prepared = PreparedRoot(root, root_key, (issuer,), issuer_key, now, activate_after, trigger)
    new_bundle = replace(bundle, trust_anchors=(*bundle.trust_anchors, root))
    step = Step(
        "root",
        "prepare",
        trigger,
        f"root rotation: prepared root {_subject(root)} (valid until {_iso(root.not_valid_after_utc)}), "
        f"added to the trust anchors; its issuer becomes active at {_iso(activate_after)}",
        {
            "root": fingerprint(root),
            "subject": _subject(root),
            "issuer_serial": f"{issuer.serial_number:x}",
            "not_after": _iso(prepared.not_after),
            "activate_after": _iso(activate_after),
        },
    )
    return new_bundle, replace(state, prepared_root=prepared), step


def next_step_due(
    bundle: TrustBundle, state: RotationState, policy: RotationPolicy
) -> tuple[datetime, str] | None:
    """When :func:`advance` next has a step to take if nothing else changes, and which step:
    (aware UTC time, description), or None when none is scheduled (no rotation in progress, and
    the automatic policy off or not applicable: no root key). What ``rotate advance`` reports
    when nothing is due now."""
    chain_end = _chain_not_after(bundle)
    due: list[tuple[datetime, str]] = []
    for r in state.retiring:
        cert = _anchor(bundle, r.sha256)
        end = r.prune_after if cert is None else min(r.prune_after, cert.not_valid_after_utc)
        due.append((end, f"the removal of the retiring root {r.subject}"))
    if (p := state.prepared_root) is not None:
        due.append(
            (min(p.activate_after, chain_end), f"the activation of the prepared root {_subject(p.root)}")
        )
    if (q := state.prepared_issuer) is not None:
        serial = q.issuer_chain[0].serial_number
        due.append(
            (min(q.activate_after, chain_end), f"the activation of the prepared issuer serial {serial:x}")
        )
    if policy.auto and _root_key(bundle) is not None:
        root, issuer = active_root(bundle), bundle.issuer
        if state.prepared_root is None:
            due.append(
                (root.not_valid_after_utc - margins(root)[0], "the preparation of a new root (--auto-rotate)")
            )
        at = issuer.not_valid_after_utc - margins(issuer)[0]
        if (
            state.prepared_issuer is None
            and at < root.not_valid_after_utc
            and min(at + policy.issuer_lifetime, root.not_valid_after_utc) > issuer.not_valid_after_utc
        ):
            due.append((at, "the preparation of a new issuer (--auto-rotate)"))
    return min(due, key=lambda d: d[0]) if due else None


# --- operator actions ----------------------------------------------------------------------


def prepare_root(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Rotation:
    """``sentryca rotate root``: a new root (and its issuer) joins the trust anchors now; its
    issuer becomes active once ``now + policy.propagation_window`` has passed (taken by
    :func:`advance`). Works without the current root's key. Raises FailedPrecondition when a
    root rotation is already prepared."""
    if state.prepared_root is not None:
        p = state.prepared_root
        raise FailedPrecondition(
            f"a root rotation is already prepared (root {_subject(p.root)}, since {_iso(p.since)}); its "
            f"issuer becomes active at {_iso(p.activate_after)}. Nothing was changed",
            reason="rotation_in_progress",
        )
    new_bundle, new_state, step = _prepare_root(bundle, state, now, policy, MANUAL)
    return Rotation(new_bundle, _recorded(new_state, policy), (step,))


def emergency_root(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Rotation:
    """``sentryca rotate root --emergency`` (after a key compromise): a new root and issuer are
    active at once and become the only trust anchor; every other anchor (the active, prepared
    and retiring roots) is removed now and recorded as removed, so trust continuity accepts the
    change. Every leaf issued before stops verifying; workloads must fetch the new anchors."""
    root, root_key, issuer, issuer_key = _generate_root_and_issuer(now, policy)
    removed = tuple(RemovedRoot(fingerprint(a), _subject(a), now, "emergency") for a in bundle.trust_anchors)
    new_bundle = TrustBundle((root,), (issuer,), issuer_key, root_key)
    new_state = RotationState(
        root_since=now,
        issuer_since=now,
        removed=_remember(state.removed, *removed),
        leaf_bound=_leaf_bound(state, policy),
    )
    step = Step(
        "root",
        "emergency",
        MANUAL,
        f"EMERGENCY root rotation: root {_subject(root)} with issuer serial {issuer.serial_number:x} is "
        f"active now and the only trust anchor; removed {len(removed)} root(s): every certificate "
        "issued before no longer verifies, and every workload must fetch the new trust anchors",
        {
            "root": fingerprint(root),
            "subject": _subject(root),
            "issuer_serial": f"{issuer.serial_number:x}",
            "removed_roots": ",".join(r.sha256 for r in removed),
        },
    )
    return Rotation(new_bundle, new_state, (step,))


def rotate_issuer(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    supplied: tuple[tuple[x509.Certificate, ...], PrivateKey] | None = None,
) -> Rotation:
    """``sentryca rotate issuer``: a new issuer under the active root, active at once; leaves
    issued before still verify (same root). ``supplied``: (issuer chain, issuer first; its key),
    made by the operator (needed when the CA does not hold the root key). Raises
    FailedPrecondition when the active root is not valid now, no root key is held and nothing is
    supplied, or the supplied issuer is not a valid CA under the active root now."""
    root = active_root(bundle)
    if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
        raise FailedPrecondition(
            f"the active root {_subject(root)} is not valid now (NotAfter {_iso(root.not_valid_after_utc)}): "
            "an issuer under it would not verify. Rotate the root instead (sentryca rotate root "
            "--emergency when it has expired). Nothing was changed",
            reason="root_invalid",
        )
    if supplied is None:
        root_key = _root_key(bundle)
        if root_key is None:
            raise FailedPrecondition(
                "the CA does not hold the active root's key (the bundle was imported without it): "
                "supply the new issuer with --issuer-cert and --issuer-key, signed by the active root "
                f"{_subject(root)}. Nothing was changed",
                reason="root_key_missing",
            )
        key = policy.algorithm.generate()
        chain: tuple[x509.Certificate, ...] = (
            generate_issuer(
                root,
                root_key,
                key,
                policy.ca_identity,
                now,
                lifetime=policy.issuer_lifetime,
                backdate=policy.clock_skew,
            ),
        )
    else:
        chain, key = supplied
        _check_supplied_issuer(chain, key, root, now)
        if chain[0] == bundle.issuer:
            raise FailedPrecondition(
                "the supplied issuer is already the active one; nothing was changed", reason="rotation_noop"
            )
    issuer = chain[0]
    new_bundle = replace(bundle, issuer_chain=chain, issuer_key=key)
    new_state = _recorded(replace(state, issuer_since=now, prepared_issuer=None), policy)
    step = Step(
        "issuer",
        "rotate",
        MANUAL,
        f"issuer rotation: issuer serial {issuer.serial_number:x} ({_subject(issuer)}) is the bundle's "
        f"active issuer from now on, valid until {_iso(issuer.not_valid_after_utc)}; leaves issued before "
        "still verify",
        {
            "issuer_serial": f"{issuer.serial_number:x}",
            "previous_issuer_serial": f"{bundle.issuer.serial_number:x}",
            "not_after": _iso(issuer.not_valid_after_utc),
            "supplied": "true" if supplied is not None else "false",
        },
    )
    return Rotation(new_bundle, new_state, (step,))


def _check_supplied_issuer(
    chain: tuple[x509.Certificate, ...], key: PrivateKey, root: x509.Certificate, now: datetime
) -> None:
    def refuse(problem: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"the supplied issuer {problem}; nothing was changed", reason="issuer_rejected"
        )

    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):  # type: ignore[arg-type]
        raise refuse("key does not match the issuer certificate")
    for n, cert in enumerate(chain):
        if not is_ca(cert):
            raise refuse(f"chain's certificate {n + 1} is not a CA")
        parent = chain[n + 1] if n + 1 < len(chain) else root
        if not issued_by(cert, parent):
            raise refuse(
                f"chain does not verify to the active root {_subject(root)} (certificate {n + 1} is not "
                "signed by the next one)"
            )
    issuer = chain[0]
    if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
        raise refuse(
            f"is not valid now (valid {_iso(issuer.not_valid_before_utc)} "
            f"to {_iso(issuer.not_valid_after_utc)})"
        )


# --- the state document --------------------------------------------------------------------


def _pem_key(key: PrivateKey) -> str:
    return private_key_pem(key).decode("ascii")


def encode_state(state: RotationState, bundle: TrustBundle) -> bytes:
    """``rotation.json`` for ``state`` of ``bundle`` (the module docstring's format)."""
    root, issuer = active_root(bundle), bundle.issuer
    prepared_root = prepared_issuer = None
    if (p := state.prepared_root) is not None:
        prepared_root = {
            "sha256": fingerprint(p.root),
            "subject": _subject(p.root),
            "not_after": _iso(p.not_after),
            "since": _iso(p.since),
            "activate_after": _iso(p.activate_after),
            "trigger": p.trigger,
            "key": _pem_key(p.root_key),
            "issuer_chain": certificates_pem(p.issuer_chain).decode("ascii"),
            "issuer_key": _pem_key(p.issuer_key),
        }
    if (q := state.prepared_issuer) is not None:
        prepared_issuer = {
            "serial": f"{q.issuer_chain[0].serial_number:x}",
            "subject": _subject(q.issuer_chain[0]),
            "root": fingerprint(q.root),
            "not_after": _iso(q.not_after),
            "since": _iso(q.since),
            "activate_after": _iso(q.activate_after),
            "trigger": q.trigger,
            "issuer_chain": certificates_pem(q.issuer_chain).decode("ascii"),
            "issuer_key": _pem_key(q.issuer_key),
        }
    doc = {
        "format": FORMAT,
        "root": {
            "active": {"sha256": fingerprint(root), "since": _opt_iso(state.root_since)},
            "prepared": prepared_root,
            "retiring": [
                {
                    "sha256": r.sha256,
                    "subject": r.subject,
                    "since": _iso(r.since),
                    "prune_after": _iso(r.prune_after),
                }
                for r in state.retiring
            ],
            "removed": [
                {"sha256": r.sha256, "subject": r.subject, "at": _iso(r.at), "reason": r.reason}
                for r in state.removed
            ],
            "leaf_bound_seconds": None if state.leaf_bound is None else int(state.leaf_bound.total_seconds()),
        },
        "issuer": {
            "active": {"serial": f"{issuer.serial_number:x}", "since": _opt_iso(state.issuer_since)},
            "prepared": prepared_issuer,
        },
    }
    return (json.dumps(doc, indent=1) + "\n").encode("ascii")


def _seconds(d: timedelta) -> int:
    return math.ceil(d.total_seconds())  # never below the bound it records


def _opt_iso(t: datetime | None) -> str | None:
    return None if t is None else _iso(t)


class _Reader:
    """Typed access to the JSON document; every problem is a BundleError naming ``item``."""

    def __init__(self, item: str) -> None:
        self.item = item

    def fail(self, problem: str) -> BundleError:
        return BundleError(problem, item=self.item)

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} is not an object")
        return value

    def text(self, obj: dict[str, Any], key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key} is missing or not text")
        return value

    def time(self, obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> datetime | None:
        value = obj.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key} is missing or not a time")
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(f"{where}.{key} is not an ISO 8601 time: {value[:40]!r}") from None
        if t.tzinfo is None:
            raise self.fail(f"{where}.{key} has no time zone: {value[:40]!r}")
        return t

    def list(self, obj: dict[str, Any], key: str, where: str) -> list[Any]:
        value = obj.get(key, [])
        if not isinstance(value, list):
            raise self.fail(f"{where}.{key} is not a list")
        return value

    def key(self, obj: dict[str, Any], key: str, where: str) -> PrivateKey:
        try:
            return load_private_key(self.text(obj, key, where).encode("ascii"))
        except (ValueError, UnicodeEncodeError) as e:
            raise self.fail(f"{where}.{key}: {e}") from None

    def chain(self, obj: dict[str, Any], key: str, where: str) -> tuple[x509.Certificate, ...]:
        try:
            return parse_certificates(self.text(obj, key, where).encode("ascii"), f"{where}.{key}")
        except UnicodeEncodeError:
            raise self.fail(f"{where}.{key} is not PEM text") from None
        except BundleError as e:
            raise self.fail(str(e)) from None

    def trigger(self, obj: dict[str, Any], where: str) -> str:
        value = obj.get("trigger")
        if value not in (MANUAL, AUTO):
            raise self.fail(f"{where}.trigger must be 'manual' or 'auto'")
        return value


def parse_state(
    items: Mapping[str, bytes], bundle: TrustBundle, labels: Mapping[str, str] | None = None
) -> RotationState:
    """The rotation state stored with ``bundle`` (``items[rotation.json]``; none → the empty state).

    Strict for everything a step would act on: the prepared root must be one of the anchors, its
    key must match it, its issuer chain must verify to it and the issuer key match; a prepared
    issuer must verify to the active root; times must be ISO 8601 with a zone. Records of
    retiring roots that are no longer anchors (or are the active root) are dropped, and an
    ``active`` record naming another root or issuer leaves its time unknown. Raises BundleError
    naming ``rotation.json`` (or its label) and the problem.
    """
    raw = items.get(ROTATION_STATE)
    if raw is None:
        return EMPTY
    item = (labels or {}).get(ROTATION_STATE, ROTATION_STATE)
    r = _Reader(item)
    doc = load_document(raw, item)
    root_doc = r.obj(doc.get("root") or {}, "root")
    issuer_doc = r.obj(doc.get("issuer") or {}, "issuer")
    root = active_root(bundle)
    active_fp = fingerprint(root)

    root_since = None
    if (active := root_doc.get("active")) is not None:
        active = r.obj(active, "root.active")
        since = r.time(active, "since", "root.active", optional=True)
        root_since = since if active.get("sha256") == active_fp else None
    issuer_since = None
    if (active := issuer_doc.get("active")) is not None:
        active = r.obj(active, "issuer.active")
        since = r.time(active, "since", "issuer.active", optional=True)
        issuer_since = since if active.get("serial") == f"{bundle.issuer.serial_number:x}" else None

    prepared_root = None
    if (p := root_doc.get("prepared")) is not None:
        where = "root.prepared"
        p = r.obj(p, where)
        cert = _anchor(bundle, r.text(p, "sha256", where))
        if cert is None:
            raise r.fail(f"{where}: the prepared root is not among the trust anchors")
        if cert == root:
            raise r.fail(f"{where}: the prepared root is the active root")
        root_key = r.key(p, "key", where)
        if public_key_der(root_key.public_key()) != public_key_der(cert.public_key()):  # type: ignore[arg-type]
            raise r.fail(f"{where}.key does not match the prepared root")
        chain, key = _prepared_chain(r, p, where, cert)
        prepared_root = PreparedRoot(
            cert,
            root_key,
            chain,
            key,
            r.time(p, "since", where),
            r.time(p, "activate_after", where),
            r.trigger(p, where),  # type: ignore[arg-type]
        )
        _check_not_after(r, p, where, prepared_root.not_after)

    prepared_issuer = None
    if (q := issuer_doc.get("prepared")) is not None:
        where = "issuer.prepared"
        q = r.obj(q, where)
        chain, key = _prepared_chain(r, q, where, root)
        prepared_issuer = PreparedIssuer(
            chain,
            key,
            root,
            r.time(q, "since", where),
            r.time(q, "activate_after", where),
            r.trigger(q, where),  # type: ignore[arg-type]
        )
        _check_not_after(r, q, where, prepared_issuer.not_after)

    retiring = []
    for n, entry in enumerate(r.list(root_doc, "retiring", "root")):
        where = f"root.retiring[{n}]"
        entry = r.obj(entry, where)
        sha = r.text(entry, "sha256", where)
        record = RetiringRoot(
            sha,
            str(entry.get("subject", "")),
            r.time(entry, "since", where),
            r.time(entry, "prune_after", where),  # type: ignore[arg-type]
        )
        if sha != active_fp and _anchor(bundle, sha) is not None:
            retiring.append(record)
    removed = []
    for n, entry in enumerate(r.list(root_doc, "removed", "root")):
        where = f"root.removed[{n}]"
        entry = r.obj(entry, where)
        removed.append(
            RemovedRoot(
                r.text(entry, "sha256", where),
                str(entry.get("subject", "")),
                r.time(entry, "at", where),  # type: ignore[arg-type]
                r.text(entry, "reason", where),
            )
        )
    leaf_bound = root_doc.get("leaf_bound_seconds")
    if leaf_bound is not None and (
        not isinstance(leaf_bound, int) or isinstance(leaf_bound, bool) or leaf_bound < 0
    ):
        raise r.fail("root.leaf_bound_seconds is not a whole number of seconds")
    return RotationState(
        root_since,
        issuer_since,
        prepared_root,
        prepared_issuer,
        tuple(retiring),
        tuple(removed[-REMOVED_HISTORY:]),
        None if leaf_bound is None else timedelta(seconds=leaf_bound),
    )


def _prepared_chain(
    r: _Reader, obj: dict[str, Any], where: str, root: x509.Certificate
) -> tuple[tuple[x509.Certificate, ...], PrivateKey]:
    chain = r.chain(obj, "issuer_chain", where)
    key = r.key(obj, "issuer_key", where)
    for n, cert in enumerate(chain):
        parent = chain[n + 1] if n + 1 < len(chain) else root
        if not is_ca(cert) or not issued_by(cert, parent):
            raise r.fail(f"{where}.issuer_chain does not verify to its root {_subject(root)}")
    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):  # type: ignore[arg-type]
        raise r.fail(f"{where}.issuer_key does not match its issuer certificate")
    return chain, key


def _check_not_after(r: _Reader, obj: dict[str, Any], where: str, actual: datetime) -> None:
    if r.time(obj, "not_after", where) != actual:
        raise r.fail(f"{where}.not_after does not match its certificates ({_iso(actual)})")


# --- what readers without keys use -----------------------------------------------------------


def describe(state: RotationState, bundle: TrustBundle) -> list[str]:
    """Lines for operators (``sentryca rotate status``): active, prepared and retiring slots."""
    root, issuer = active_root(bundle), bundle.issuer
    lines = [
        f"root    active    {_subject(root)}  NotAfter {_iso(root.not_valid_after_utc)}"
        + (f"  since {_iso(state.root_since)}" if state.root_since else ""),
        f"issuer  active    serial {issuer.serial_number:x}  NotAfter {_iso(issuer.not_valid_after_utc)}"
        + (f"  since {_iso(state.issuer_since)}" if state.issuer_since else ""),
    ]
    if (p := state.prepared_root) is not None:
        lines.append(
            f"root    prepared  {_subject(p.root)}  NotAfter {_iso(p.root.not_valid_after_utc)}  "
            f"since {_iso(p.since)} ({p.trigger})  activates at {_iso(p.activate_after)}"
        )
    if (q := state.prepared_issuer) is not None:
        lines.append(
            f"issuer  prepared  serial {q.issuer_chain[0].serial_number:x}  NotAfter {_iso(q.not_after)}  "
            f"since {_iso(q.since)} ({q.trigger})  activates at {_iso(q.activate_after)}"
        )
    for t in state.retiring:
        lines.append(
            f"root    retiring  {t.subject}  since {_iso(t.since)}  removed after {_iso(t.prune_after)}"
        )
    for x in state.removed[-3:]:
        lines.append(f"root    removed   {x.subject}  at {_iso(x.at)} ({x.reason})")
    return lines
