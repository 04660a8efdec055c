"""Rule 5 of :mod:`.rules`: an issuer prepared under the active root (design §5.12, §5.16).

:func:`issuer_prepare_due` says whether the rule would prepare one now; :func:`auto_prepare_issuer`
takes the step, with an issuer signed by the held root key or, with ``policy.upstream``, the one
an upstream authority signed (``upstream_issuer``, fetched by the caller's adapter step when
:func:`issuer_prepare_due` said so, so that the rules stay pure).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from cryptography import x509

from ..bundle import TrustBundle, issued_by
from ..keys import PrivateKey
from .state import (
    AUTO,
    PreparedIssuer,
    RotationPolicy,
    RotationState,
    Step,
    active_root,
    held_root_key,
    iso,
    kept_issuer_key,
    margins,
)

UpstreamIssuer = tuple[tuple[x509.Certificate, ...], PrivateKey]  # (issuer chain, its key)


def issuer_prepare_due(
    bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
) -> bool:
    """Whether rule 5 would prepare an issuer now if it could sign one: the automatic policy is
    on, no issuer is prepared, the active root is valid, less than the prepare margin of the
    active issuer remains and a new issuer would end later. With ``policy.upstream`` the adapter
    asks the upstream for an issuer exactly when this is true, then passes it to :func:`advance`."""
    if not policy.auto or state.prepared_issuer is not None:
        return False
    root, issuer = active_root(bundle), bundle.issuer
    if not root.not_valid_before_utc <= now < root.not_valid_after_utc:
        return False
    if now < issuer.not_valid_after_utc - margins(issuer)[0]:
        return False
    # a new issuer must outlive this one (an issuer never outlives its root, so with the default
    # equal lifetimes the root's rotation renews the issuer)
    return min(now + policy.issuer_lifetime, root.not_valid_after_utc) > issuer.not_valid_after_utc


def auto_prepare_issuer(
    bundle: TrustBundle,
    state: RotationState,
    now: datetime,
    policy: RotationPolicy,
    upstream_issuer: UpstreamIssuer | None = None,
) -> tuple[TrustBundle, RotationState, Step] | None:
    root_key = held_root_key(bundle)
    if not issuer_prepare_due(bundle, state, now, policy):
        return None
    root, issuer = active_root(bundle), bundle.issuer
    if upstream_issuer is not None and policy.upstream is not None:
        chain, key = upstream_issuer
        if chain[0].not_valid_after_utc <= issuer.not_valid_after_utc or not issued_by(chain[-1], root):
            return None  # the adapter checked it (ca_core.upstream.accept_issued); never a worse one
        signer = policy.upstream
        signed_by = f"signed by {signer}"
    elif root_key is not None:
        cert, key = policy.new_issuer(root, root_key, now, kept_issuer_key(bundle.issuer_key))
        chain = (cert,)
        signer, signed_by = "root", "signed with the root key"
    else:
        return None
    cert = chain[0]
    activate_after = max(now, issuer.not_valid_after_utc - margins(issuer)[1])
    prepared = PreparedIssuer(chain, key, root, now, activate_after, AUTO)
    step = Step(
        "issuer",
        "prepare",
        AUTO,
        f"issuer rotation: prepared issuer serial {cert.serial_number:x} ({signed_by}, valid until "
        f"{iso(cert.not_valid_after_utc)}); it becomes active at {iso(activate_after)}",
        {
            "issuer_serial": f"{cert.serial_number:x}",
            "not_after": iso(cert.not_valid_after_utc),
            "activate_after": iso(activate_after),
            "signed_by": signer,
        },
    )
    return bundle, replace(state, prepared_issuer=prepared), step
