"""What is due, and the automatic steps (design §5): :func:`advance` and :func:`next_step_due`.

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
   ones, the old root starts retiring, a prepared issuer (under the old root) is dropped. An
   issuer prepared with the root that has less than its prepare margin left by then (a short-lived
   issuer outlasted by the propagation wait) is replaced by one signed now with the root's key.
3. **Activate** a prepared issuer once ``now >= activate_after`` (or the active chain expired).
4. With the automatic policy only, and only for a root whose key the CA holds (it generated the
   root, or was given the key; a bundle imported without it is the operator's PKI) in memory (a
   KMS root key is the operator's: its successor is a KMS key they create, ``rotate root
   --root-key kms://...``; issuers under a KMS root still rotate automatically): **prepare**
   a root when less than ``min(lifetime/2, 30 days)`` of the active root remains;
   ``activate_after = max(now + propagation window, NotAfter - min(lifetime/6, 7 days))``.
5. Likewise **prepare** an issuer under the active root when less than ``min(lifetime/2, 30
   days)`` of the active issuer remains and a new one would end later (an issuer never outlives
   its root, so with the default equal lifetimes the root's rotation renews the issuer);
   ``activate_after = NotAfter - min(lifetime/6, 7 days)``. With an upstream authority
   (``policy.upstream``, no root key held) the issuer is the one the upstream signed, passed in
   by the adapter step that asked for it when :func:`.issuer_rule.issuer_prepare_due` said so (design §5.16).

6. JWT keys (:mod:`.jwt_keys`): **prune** a retired JWT key, **activate** a prepared one, and
   with the automatic policy **prepare** one (design §5.17).

The operator's actions (:mod:`.actions`) share the public helpers among the step functions:
the bound to act on and its record (rule 0), the removal history, a new root and issuer, and the
step that prepares a root (rule 4).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography import x509

from ..bundle import TrustBundle, chain_not_after, fingerprint
from ..certs import generate_root
from ..durations import format_duration
from ..keys import PrivateKey, key_uri_of
from . import jwt_keys
from .issuer_rule import UpstreamIssuer, auto_prepare_issuer
from .state import (
    AUTO,
    REMOVED_HISTORY,
    PreparedRoot,
    RemovedRoot,
    RetiringRoot,
    Rotation,
    RotationPolicy,
    RotationState,
    Step,
    active_root,
    find_anchor,
    held_root_key,
    iso,
    kept_issuer_key,
    margins,
    subject_of,
)


def _chain_not_after(bundle: TrustBundle) -> datetime:
    return chain_not_after((*bundle.issuer_chain, active_root(bundle)))


def _seconds(d: timedelta) -> int:
    return math.ceil(d.total_seconds())  # never below the bound it records


def advance(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    upstream_issuer: UpstreamIssuer | None = None,
) -> Rotation | None:
    """Every rotation step due at ``now`` (rules 1-5 of the module docstring), or None.

    bundle: the bundle in force; state: its rotation state (:func:`.codec.parse_state`); now: aware
    UTC. Never raises for a due step it cannot take (e.g. no root key): it is simply not taken.
    upstream_issuer: with ``policy.upstream``, the issuer (chain under the active root, issuer
    first; its key) an upstream authority signed because :func:`.issuer_rule.issuer_prepare_due` said so:
    rule 5 prepares it instead of signing one with the root key (which the CA does not hold).
    """
    steps: list[Step] = []
    for _ in range(8):  # each rule changes the state so that it no longer applies
        taken = _next_step(bundle, state, now, policy, upstream_issuer)
        if taken is None:
            break
        bundle, state, step = taken
        if step.kind == "issuer" and step.action == "prepare":
            upstream_issuer = None  # used
        state = with_leaf_bound_recorded(state, policy)  # a step taken here used this writer's bound
        steps.append(step)
    return Rotation(bundle, state, tuple(steps)) if steps else None


def _next_step(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    upstream_issuer: UpstreamIssuer | None,
) -> tuple[TrustBundle, RotationState, Step] | None:
    for rule in (
        _raise_bound,
        _prune,
        _activate_root,
        _activate_issuer,
        _auto_prepare_root,
    ):
        taken = rule(bundle, state, now, policy)
        if taken is not None:
            return taken
    taken = auto_prepare_issuer(bundle, state, now, policy, upstream_issuer)
    if taken is not None:
        return taken
    for jwt_rule in jwt_keys.RULES:
        taken = jwt_rule(bundle, state, now, policy)
        if taken is not None:
            return taken
    return None


def acting_leaf_bound(state: RotationState, policy: RotationPolicy) -> timedelta:
    """The bound to act on: the longer of this writer's and the one the state records."""
    return max(policy.leaf_bound, state.leaf_bound or timedelta(0))


def with_leaf_bound_recorded(state: RotationState, policy: RotationPolicy) -> RotationState:
    """``state`` recording this writer's leaf bound when it is the longest yet."""
    bound = acting_leaf_bound(state, policy)
    return state if state.leaf_bound == bound else replace(state, leaf_bound=bound)


def _raise_bound(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
    recorded = state.leaf_bound or timedelta(0)
    if policy.leaf_bound <= recorded or (state.prepared_root is None and not state.retiring):
        return None
    retiring = tuple(
        replace(r, prune_after=max(r.prune_after, r.since + policy.leaf_bound)) for r in state.retiring
    )
    later = [r for r, was in zip(retiring, state.retiring, strict=True) if r.prune_after != was.prune_after]
    was = format_duration(recorded) if state.leaf_bound is not None else "none"
    effect = (
        "retiring roots now stay until " + ", ".join(f"{r.subject} {iso(r.prune_after)}" for r in later)
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


def _prune(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
    active = fingerprint(active_root(bundle))
    for retiring in state.retiring:
        cert = find_anchor(bundle, retiring.sha256)
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
            removed=remember_removed(
                state.removed, RemovedRoot(retiring.sha256, retiring.subject, now, reason)
            ),
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


def remember_removed(removed: tuple[RemovedRoot, ...], *more: RemovedRoot) -> tuple[RemovedRoot, ...]:
    """``removed`` and ``more``, the last :data:`REMOVED_HISTORY` of them."""
    return (*removed, *more)[-REMOVED_HISTORY:]


def _activate_root(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
    prepared = state.prepared_root
    if prepared is None or (now < prepared.activate_after and now < _chain_not_after(bundle)):
        return None
    old = active_root(bundle)
    prune_after = min(now + acting_leaf_bound(state, policy), _chain_not_after(bundle) + policy.clock_skew)
    chain, key, renewed = _issuer_for_activation(prepared, now, policy)
    new_bundle = TrustBundle(bundle.trust_anchors, chain, key, prepared.root_key).with_jwt_of(bundle)
    new_state = replace(
        state,
        root_since=now,
        issuer_since=now,
        prepared_root=None,
        prepared_issuer=None,  # it chains to the old root
        retiring=(*state.retiring, RetiringRoot(fingerprint(old), subject_of(old), now, prune_after)),
    )
    early = now < prepared.activate_after
    step = Step(
        "root",
        "activate",
        prepared.trigger,
        f"root rotation: the prepared root {subject_of(prepared.root)} is now active with issuer serial "
        f"{chain[0].serial_number:x}"
        + (
            f" (signed now: the prepared issuer had {format_duration(renewed)} left, less than half "
            "its lifetime)"
            if renewed is not None
            else ""
        )
        + (" (early: the active signing chain expired)" if early else "")
        + f"; the old root {subject_of(old)} stays in the trust anchors until {iso(prune_after)}",
        {
            "root": fingerprint(prepared.root),
            "subject": subject_of(prepared.root),
            "issuer_serial": f"{chain[0].serial_number:x}",
            "issuer_renewed": "false" if renewed is None else "true",
            "retiring_root": fingerprint(old),
            "prune_after": iso(prune_after),
        },
    )
    return new_bundle, new_state, step


def _issuer_for_activation(
    prepared: PreparedRoot, now: datetime, policy: RotationPolicy
) -> tuple[tuple[x509.Certificate, ...], PrivateKey, timedelta | None]:
    """The issuer a prepared root becomes active with: its prepared one, or, when that has less
    than its prepare margin (``margins``) left, a new one signed now with the prepared root's key
    for ``policy.issuer_lifetime`` (a short-lived issuer prepared with its root may have run out
    while the root propagated: a 24 h issuer under a root that waits 24 h or more). Returns
    (chain, key, what the prepared issuer had left when it was replaced, else None)."""
    issuer = prepared.issuer_chain[0]
    left = issuer.not_valid_after_utc - now
    root = prepared.root
    if left >= margins(issuer)[0] or not root.not_valid_before_utc <= now < root.not_valid_after_utc:
        return prepared.issuer_chain, prepared.issuer_key, None
    cert, key = policy.new_issuer(prepared.root, prepared.root_key, now, kept_issuer_key(prepared.issuer_key))
    if cert.not_valid_after_utc <= issuer.not_valid_after_utc:  # pragma: no cover - a fresh one ends later
        return prepared.issuer_chain, prepared.issuer_key, None
    return (cert,), key, max(left, timedelta(0))


def _activate_issuer(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
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
        f"issuer rotation: issuer serial {issuer.serial_number:x} ({subject_of(issuer)}) is now active, "
        f"valid until {iso(issuer.not_valid_after_utc)}",
        {
            "issuer_serial": f"{issuer.serial_number:x}",
            "previous_issuer_serial": f"{bundle.issuer.serial_number:x}",
            "not_after": iso(issuer.not_valid_after_utc),
        },
    )
    return new_bundle, new_state, step


def _auto_prepare_root(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> tuple[TrustBundle, RotationState, Step] | None:
    if not policy.auto or state.prepared_root is not None or not _rotates_root(bundle):
        return None
    root = active_root(bundle)
    prepare_within, _ = margins(root)
    if now < root.not_valid_after_utc - prepare_within:
        return None
    return prepare_root_step(bundle, state, now, policy, AUTO)


def _rotates_root(bundle: TrustBundle) -> bool:
    # Rule 4 applies to a root key held in memory only: a new KMS key is the operator's to create.
    key = held_root_key(bundle)
    return key is not None and key_uri_of(key) is None


def generate_root_and_issuer(
    now: datetime,
    policy: RotationPolicy,
    root_key: PrivateKey | None = None,
    issuer_key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey, x509.Certificate, PrivateKey]:
    """A new root and an issuer under it, as ``policy`` makes them: (root, key, issuer, key).
    root_key: the new root's key when the operator supplies it (a KMS key), else generated;
    issuer_key: the issuer key to certify (the current one when in KMS), else generated."""
    root_key = root_key if root_key is not None else policy.algorithm.generate()
    root = generate_root(
        policy.trust_domain, root_key, now, lifetime=policy.root_lifetime, backdate=policy.clock_skew
    )
    issuer, issuer_key = policy.new_issuer(root, root_key, now, issuer_key)
    return root, root_key, issuer, issuer_key


def prepare_root_step(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    trigger: str,
    root_key: PrivateKey | None = None,
) -> tuple[TrustBundle, RotationState, Step]:
    """Rule 4's step, and ``sentryca rotate root``'s: a new root (and its issuer) joins the trust
    anchors now and becomes active at ``activate_after`` (module docstring). (bundle, state, step).
    root_key: the new root's key when supplied (``rotate root --root-key kms://...``)."""
    root, root_key, issuer, issuer_key = generate_root_and_issuer(
        now, policy, root_key, kept_issuer_key(bundle.issuer_key)
    )
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
        f"root rotation: prepared root {subject_of(root)} (valid until {iso(root.not_valid_after_utc)}), "
        f"added to the trust anchors; its issuer becomes active at {iso(activate_after)}",
        {
            "root": fingerprint(root),
            "subject": subject_of(root),
            "issuer_serial": f"{issuer.serial_number:x}",
            "not_after": iso(prepared.not_after),
            "activate_after": iso(activate_after),
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
        cert = find_anchor(bundle, r.sha256)
        end = r.prune_after if cert is None else min(r.prune_after, cert.not_valid_after_utc)
        due.append((end, f"the removal of the retiring root {r.subject}"))
    if (p := state.prepared_root) is not None:
        due.append(
            (min(p.activate_after, chain_end), f"the activation of the prepared root {subject_of(p.root)}")
        )
    if (q := state.prepared_issuer) is not None:
        serial = q.issuer_chain[0].serial_number
        due.append(
            (min(q.activate_after, chain_end), f"the activation of the prepared issuer serial {serial:x}")
        )
    held = held_root_key(bundle) is not None
    if policy.auto and (held or policy.upstream is not None):
        root, issuer = active_root(bundle), bundle.issuer
        if state.prepared_root is None and _rotates_root(bundle):
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
    due.extend(jwt_keys.next_jwt_steps(bundle, state, policy))
    return min(due, key=lambda d: d[0]) if due else None
