"""JWT key rotation (design §5.17): publish, then sign, then retire, then prune.

A JWT-SVID verifies only against a JWK Set that publishes its key, and verifiers cache the set
(the OIDC server answers ``max-age=3600``). So a key changes in three steps, each written like
the X.509 steps (one conditional write per step, :func:`.rules.advance` takes them):

1. **prepare**: a new key joins ``jwks.json`` (its private key only in the secret state);
   ``jwt.key`` still signs. ``activate_after = now + policy.jwt_publish``: the longest a verifier
   may hold a JWK Set fetched before the change (cache) plus the longest a CA may serve the old
   set (the notice bound) plus the federation delay.
2. **activate** at ``max(activate_after, since + this writer's jwt_publish)``: the new key becomes
   ``jwt.key``; the old one stays published as **retiring** with ``prune_after = now +
   policy.jwt_retire`` (notice bound: a CA that has not seen the step still signs with it; plus
   ``--jwt-ttl`` and clock skew: the last such token's lifetime and the verifier's leeway).
3. **prune** at ``max(prune_after, since + this writer's jwt_retire)``: its entry leaves
   ``jwks.json``; trust continuity (:func:`.document.released_jwt_keys`) accepts exactly that.

Each writer acts on the later of the recorded time and its own bound, so a writer with longer
settings never activates or prunes early. Under the automatic policy a key is prepared once it
has signed for ``jwt_key_lifetime - jwt_publish`` (for a key whose start is not recorded, its
lifetime counts from the first check that sees it: step ``record``), so its successor signs
about ``jwt_key_lifetime`` after it began. ``--jwt-key-id`` pins one kid: no
rotation then. The new key has the current key's algorithm and its RFC 7638 thumbprint as kid.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..bundle import TrustBundle
from ..errors import FailedPrecondition
from ..jwt_svid import (
    algorithm_for_key,
    default_key_id,
    entry_thumbprint,
    jwks_document,
    parse_jwks,
    public_jwk,
    signing_key_id,
    thumbprint,
)
from .state import (
    AUTO,
    MANUAL,
    REMOVED_HISTORY,
    PreparedJwtKey,
    RemovedJwtKey,
    RetiringJwtKey,
    Rotation,
    RotationPolicy,
    RotationState,
    Step,
    iso,
)

Taken = tuple[TrustBundle, RotationState, Step]


def active_kid(bundle: TrustBundle) -> str | None:
    """The kid ``jwt.key`` signs under (its ``jwks.json`` entry's), or None without a JWT key."""
    if bundle.jwt_key is None or bundle.jwks is None:
        return None
    return signing_key_id(bundle.jwks, bundle.jwt_key)


def _refuse(problem: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(f"{problem}. Nothing was changed", reason=reason)


def _prepare(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy, trigger: str
) -> Taken:
    algorithm = algorithm_for_key(bundle.jwt_key) if bundle.jwt_key is not None else None
    if bundle.jwks is None or algorithm is None:  # the callers check; parse_bundle: no other key
        raise _refuse("the trust bundle holds no JWT key", "jwt_key_missing")
    key = algorithm.generate()
    kid = default_key_id(key)
    jwks = jwks_document([*parse_jwks(bundle.jwks), public_jwk(key, kid, algorithm)])
    activate_after = now + policy.jwt_publish
    prepared = PreparedJwtKey(key, kid, algorithm, now, activate_after, trigger)
    step = Step(
        "jwt",
        "prepare",
        trigger,
        f"JWT key rotation: published the new key kid {kid} ({algorithm.value}) in jwks.json; it "
        f"signs from {iso(activate_after)}, once every verifier's cached JWK Set holds it",
        {"kid": kid, "thumbprint": thumbprint(key).hex(), "activate_after": iso(activate_after)},
    )
    return replace(bundle, jwks=jwks), replace(state, prepared_jwt=prepared), step


def _activate_now(bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy) -> Taken:
    prepared = state.prepared_jwt
    if prepared is None or bundle.jwt_key is None:  # the callers check
        raise _refuse("no JWT key is prepared", "jwt_key_missing")
    old_kid = active_kid(bundle) or default_key_id(bundle.jwt_key)
    prune_after = now + policy.jwt_retire
    retiring = RetiringJwtKey(old_kid, thumbprint(bundle.jwt_key).hex(), now, prune_after)
    new_state = replace(
        state,
        jwt_since=now,
        prepared_jwt=None,
        retiring_jwt=(*state.retiring_jwt, retiring),
    )
    step = Step(
        "jwt",
        "activate",
        prepared.trigger,
        f"JWT key rotation: kid {prepared.kid} signs JWT-SVIDs from now on; the previous key kid "
        f"{old_kid} stays in jwks.json until {iso(prune_after)} (its last tokens' lifetime)",
        {"kid": prepared.kid, "retiring_kid": old_kid, "prune_after": iso(prune_after)},
    )
    return replace(bundle, jwt_key=prepared.key), new_state, step


def activate_jwt(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Taken | None:
    """Rule: a prepared JWT key signs once ``activate_after`` and this writer's publish period
    have passed."""
    prepared = state.prepared_jwt
    if prepared is None or bundle.jwt_key is None:
        return None
    if now < max(prepared.activate_after, prepared.since + policy.jwt_publish):
        return None
    return _activate_now(bundle, state, now, policy)


def prune_jwt(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Taken | None:
    """Rule: a retiring JWT key leaves ``jwks.json`` once ``prune_after`` and this writer's
    retire period have passed (every token it signed has expired)."""
    if bundle.jwks is None:
        return None
    for retiring in state.retiring_jwt:
        if now < max(retiring.prune_after, retiring.since + policy.jwt_retire):
            continue
        entries = [e for e in parse_jwks(bundle.jwks) if entry_thumbprint(e) != retiring.thumbprint]
        if not entries:  # pragma: no cover - the signing key's entry always stays
            continue
        new_state = replace(
            state,
            retiring_jwt=tuple(r for r in state.retiring_jwt if r is not retiring),
            removed_jwt=(
                *state.removed_jwt,
                RemovedJwtKey(retiring.kid, retiring.thumbprint, now, "pruned"),
            )[-REMOVED_HISTORY:],
        )
        step = Step(
            "jwt",
            "prune",
            AUTO,
            f"JWT key rotation: removed the retired key kid {retiring.kid} from jwks.json (every "
            "token it signed has expired)",
            {"kid": retiring.kid, "thumbprint": retiring.thumbprint, "reason": "pruned"},
        )
        return replace(bundle, jwks=jwks_document(entries)), new_state, step
    return None


def auto_prepare_jwt(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> Taken | None:
    """Rule (``--auto-rotate``): prepare a successor once the JWT key has signed for
    ``jwt_key_lifetime - jwt_publish``. A key whose start is not recorded (generated with the
    bundle, added at a start, or written by Dapr's Sentry) gets ``now`` recorded (step
    ``record``), so its lifetime counts from when a writer first saw it."""
    if (
        not policy.auto
        or policy.jwt_key_lifetime is None
        or policy.jwt_key_id_fixed
        or bundle.jwt_key is None
        or state.prepared_jwt is not None
    ):
        return None
    if state.jwt_since is None:  # a key of unknown age: its lifetime counts from now
        kid = active_kid(bundle) or "?"
        step = Step(
            "jwt",
            "record",
            AUTO,
            f"JWT key rotation: the signing key kid {kid} has no recorded start; --jwt-key-ttl counts "
            "from now",
            {"kid": kid, "since": iso(now)},
        )
        return bundle, replace(state, jwt_since=now), step
    due = _auto_due(state, policy)
    if due is not None and now < due:
        return None
    return _prepare(bundle, state, now, policy, AUTO)


def _auto_due(state: RotationState, policy: RotationPolicy) -> datetime | None:
    """When the automatic policy prepares the next key (None: its start is not recorded yet)."""
    if state.jwt_since is None or policy.jwt_key_lifetime is None:
        return None
    return state.jwt_since + max(policy.jwt_key_lifetime - policy.jwt_publish, policy.jwt_publish)


RULES = (prune_jwt, activate_jwt, auto_prepare_jwt)


def next_jwt_steps(
    bundle: TrustBundle, state: RotationState, policy: RotationPolicy
) -> list[tuple[datetime, str]]:
    """(when, what) of each JWT step scheduled, for :func:`.rules.next_step_due`."""
    due = [
        (max(r.prune_after, r.since + policy.jwt_retire), f"the removal of the retired JWT key kid {r.kid}")
        for r in state.retiring_jwt
    ]
    if (p := state.prepared_jwt) is not None:
        due.append(
            (max(p.activate_after, p.since + policy.jwt_publish), f"the activation of JWT key kid {p.kid}")
        )
    elif (
        policy.auto and policy.jwt_key_lifetime is not None and not policy.jwt_key_id_fixed and bundle.jwt_key
    ):
        at = _auto_due(state, policy)
        if at is not None:
            due.append((at, "the preparation of a new JWT key (--auto-rotate)"))
    return due


def rotate_jwt_key(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy, *, at_once: bool = False
) -> Rotation:
    """``sentryca rotate jwt-key``: publish a new JWT key that signs after ``policy.jwt_publish``
    (taken by :func:`.rules.advance`); ``at_once`` (``--now``): it also signs at once, so a
    verifier holding a JWK Set cached before this write refuses the new tokens until its cache
    expires (up to an hour). Raises FailedPrecondition (nothing changes) when the bundle has no
    JWT key, ``--jwt-key-id`` pins the kid, or a JWT key is already prepared (``--now`` then
    activates that one at once)."""
    if bundle.jwt_key is None or bundle.jwks is None:
        raise _refuse(
            "the trust bundle holds no JWT key (start the CA with --jwt-enabled true first)",
            "jwt_key_missing",
        )
    if policy.jwt_key_id_fixed:
        raise _refuse(
            "--jwt-key-id pins the kid of JWT-SVIDs to one key; unset it (the key keeps its kid in "
            "jwks.json) to rotate",
            "jwt_key_id_fixed",
        )
    steps: list[Step] = []
    if state.prepared_jwt is not None:
        p = state.prepared_jwt
        if not at_once:
            raise _refuse(
                f"a JWT key rotation is already prepared (kid {p.kid}, since {iso(p.since)}); it signs "
                f"from {iso(p.activate_after)}",
                "rotation_in_progress",
            )
    else:
        bundle, state, step = _prepare(bundle, state, now, policy, MANUAL)
        steps.append(step)
    if at_once and state.prepared_jwt is not None:
        state = replace(state, prepared_jwt=replace(state.prepared_jwt, trigger=MANUAL))
        bundle, state, step = _activate_now(bundle, state, now, policy)
        steps.append(
            replace(
                step,
                action="rotate",
                message=step.message + " (--now: verifiers holding a "
                "JWK Set cached before this change refuse its tokens until they fetch it again)",
            )
        )
    return Rotation(bundle, state, tuple(steps))
