"""The operator's rotation actions (design §5): what ``sentryca rotate`` does on request.

:func:`prepare_root` (a new root joins the anchors; its issuer becomes active once
``now + propagation window`` has passed, taken by :func:`.rules.advance`), :func:`emergency_root`
(a new root and issuer active at once; every other anchor removed) and :func:`rotate_issuer` (a
new active issuer at once: generated with the root key, or supplied by the operator and checked
here). Each returns a :class:`.state.Rotation` of one step, or raises FailedPrecondition and
changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from cryptography import x509

from ..bundle import TrustBundle, fingerprint, is_ca, issued_by
from ..errors import FailedPrecondition
from ..keys import PrivateKey, public_key_der
from .rules import (
    acting_leaf_bound,
    generate_root_and_issuer,
    prepare_root_step,
    remember_removed,
    with_leaf_bound_recorded,
)
from .state import (
    MANUAL,
    RemovedRoot,
    Rotation,
    RotationPolicy,
    RotationState,
    Step,
    active_root,
    held_root_key,
    iso,
    kept_issuer_key,
    subject_of,
)


def prepare_root(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    root_key: PrivateKey | None = None,
) -> Rotation:
    """``sentryca rotate root``: a new root (and its issuer) joins the trust anchors now; its
    issuer becomes active once ``now + policy.propagation_window`` has passed (taken by
    :func:`.rules.advance`). Works without the current root's key. root_key: the new root's key
    when supplied (a KMS key), else generated. Raises FailedPrecondition when a root rotation is
    already prepared."""
    if state.prepared_root is not None:
        p = state.prepared_root
        raise FailedPrecondition(
            f"a root rotation is already prepared (root {subject_of(p.root)}, since {iso(p.since)}); its "
            f"issuer becomes active at {iso(p.activate_after)}. Nothing was changed",
            reason="rotation_in_progress",
        )
    new_bundle, new_state, step = prepare_root_step(bundle, state, now, policy, MANUAL, root_key)
    return Rotation(new_bundle, with_leaf_bound_recorded(new_state, policy), (step,))


def emergency_root(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    root_key: PrivateKey | None = None,
) -> Rotation:
    """``sentryca rotate root --emergency`` (after a key compromise): a new root and issuer are
    active at once and become the only trust anchor; every other anchor (the active, prepared
    and retiring roots) is removed now and recorded as removed, so trust continuity accepts the
    change. Every leaf issued before stops verifying; workloads must fetch the new anchors.
    root_key: the new root's key when supplied (a KMS key), else generated."""
    root, root_key, issuer, issuer_key = generate_root_and_issuer(
        now, policy, root_key, kept_issuer_key(bundle.issuer_key)
    )
    removed = tuple(
        RemovedRoot(fingerprint(a), subject_of(a), now, "emergency") for a in bundle.trust_anchors
    )
    new_bundle = TrustBundle((root,), (issuer,), issuer_key, root_key).with_jwt_of(bundle)
    new_state = RotationState(
        root_since=now,
        issuer_since=now,
        removed=remember_removed(state.removed, *removed),
        leaf_bound=acting_leaf_bound(state, policy),
        # the JWT key and its rotation are kept as they are
        jwt_since=state.jwt_since,
        prepared_jwt=state.prepared_jwt,
        retiring_jwt=state.retiring_jwt,
        removed_jwt=state.removed_jwt,
    )
    step = Step(
        "root",
        "emergency",
        MANUAL,
        f"EMERGENCY root rotation: root {subject_of(root)} with issuer serial {issuer.serial_number:x} is "
        f"active now and the only trust anchor; removed {len(removed)} root(s): every certificate "
        "issued before no longer verifies, and every workload must fetch the new trust anchors",
        {
            "root": fingerprint(root),
            "subject": subject_of(root),
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
    *,
    issuer_key: PrivateKey | None = None,
    fresh_key: bool = False,
) -> Rotation:
    """``sentryca rotate issuer``: a new issuer under the active root, active at once; leaves
    issued before still verify (same root). ``supplied``: (issuer chain, issuer first; its key),
    made by the operator (needed when the CA does not hold the root key). Otherwise the root key
    certifies ``issuer_key`` when given (``--issuer-key kms://...``), else the current issuer key
    when it is in KMS (unless ``fresh_key``: ``--issuer-key local``), else a fresh local key. Raises
    FailedPrecondition when the active root is not valid now, no root key is held and nothing is
    supplied, or the supplied issuer is not a valid CA under the active root now."""
    root = active_root(bundle)
    if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
        raise FailedPrecondition(
            f"the active root {subject_of(root)} is not valid now "
            f"(NotAfter {iso(root.not_valid_after_utc)}): an issuer under it would not verify. "
            "Rotate the root instead (sentryca rotate root --emergency when it has expired). "
            "Nothing was changed",
            reason="root_invalid",
        )
    if supplied is None:
        root_key = held_root_key(bundle)
        if root_key is None:
            raise FailedPrecondition(
                "the CA does not hold the active root's key (the bundle was imported without it): "
                "supply the new issuer with --issuer-cert and --issuer-key, signed by the active root "
                f"{subject_of(root)}. Nothing was changed",
                reason="root_key_missing",
            )
        if issuer_key is None and not fresh_key:
            issuer_key = kept_issuer_key(bundle.issuer_key)
        cert, key = policy.new_issuer(root, root_key, now, issuer_key)
        chain: tuple[x509.Certificate, ...] = (cert,)
    else:
        chain, key = supplied
        _check_supplied_issuer(chain, key, root, now)
        if chain[0] == bundle.issuer:
            raise FailedPrecondition(
                "the supplied issuer is already the active one; nothing was changed", reason="rotation_noop"
            )
    issuer = chain[0]
    new_bundle = replace(bundle, issuer_chain=chain, issuer_key=key)
    new_state = with_leaf_bound_recorded(replace(state, issuer_since=now, prepared_issuer=None), policy)
    step = Step(
        "issuer",
        "rotate",
        MANUAL,
        f"issuer rotation: issuer serial {issuer.serial_number:x} ({subject_of(issuer)}) is the bundle's "
        f"active issuer from now on, valid until {iso(issuer.not_valid_after_utc)}; leaves issued before "
        "still verify",
        {
            "issuer_serial": f"{issuer.serial_number:x}",
            "previous_issuer_serial": f"{bundle.issuer.serial_number:x}",
            "not_after": iso(issuer.not_valid_after_utc),
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

    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):
        raise refuse("key does not match the issuer certificate")
    for n, cert in enumerate(chain):
        if not is_ca(cert):
            raise refuse(f"chain's certificate {n + 1} is not a CA")
        parent = chain[n + 1] if n + 1 < len(chain) else root
        if not issued_by(cert, parent):
            raise refuse(
                f"chain does not verify to the active root {subject_of(root)} (certificate {n + 1} is not "
                "signed by the next one)"
            )
    issuer = chain[0]
    if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
        raise refuse(
            f"is not valid now (valid {iso(issuer.not_valid_before_utc)} "
            f"to {iso(issuer.not_valid_after_utc)})"
        )
