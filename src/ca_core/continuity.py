"""Trust continuity: may a replacement bundle replace the one in force? (design §5.4)

The one decision every entry point asks before a new bundle takes effect: the running CA (a
restart, a store poll, its own rotation step), the config-change function, and ``sentryca bundle
import``. Each keeps only its I/O and its wording of the refusal.

The rule: a replacement whose trust anchors leave out the current active root (the root the
current issuer chain ends at) is refused, since every workload holding a current certificate
would stop trusting its peers, unless that root is *released*
(:func:`ca_core.rotation.document.released_roots`: expired, pruned as the current rotation state
scheduled, activated-and-pruned when its chain expired, or removed by a recorded emergency
rotation), or the operator forces it. Likewise a replacement whose ``jwks.json`` leaves out a key
the current one publishes is refused (JWT-SVIDs signed with it would stop verifying) unless that
key is released (:func:`ca_core.rotation.document.released_jwt_keys`: the current rotation state
retires it and its ``prune_after`` has passed) or the operator forces it.

Where there is no bundle in force (a task starting, the config-change function), "current" is the
store's **record of the last accepted bundle** (:func:`judge_against_record`): its public part,
which every store writes with each write through the port and repairs only from a bundle a CA
accepted (design §5.5), and which is also the evidence that the store held a bundle
(``held_before``). A deliberate replacement (``bundle import --force``, ``bundle regenerate``)
writes that record for the bundle it wrote: the override this rule honours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from .bundle import JWKS, ROOT_KEY, PublicBundle, fingerprint, parse_public_bundle
from .errors import BundleError
from .keys import load_private_key, public_key_der
from .rotation.document import public_items, released_jwt_keys, released_roots


@dataclass(frozen=True)
class Verdict:
    """The answer for one replacement.

    allowed: whether it may take effect. dropped_root: the current active root the replacement
    leaves out of its trust anchors (None when it keeps it or there is none); set also when the
    drop is allowed (released or forced). released: that root is released by the rotation rules.
    dropped_jwt_keys: the kid of each key of the current ``jwks.json`` the replacement leaves out
    that the rotation rules do not release.
    """

    allowed: bool
    dropped_root: x509.Certificate | None = None
    released: bool = False
    dropped_jwt_keys: tuple[str, ...] = ()


def judge_replacement(
    current: PublicBundle,
    current_items: Mapping[str, bytes],
    new: PublicBundle,
    new_items: Mapping[str, bytes],
    now: datetime,
    *,
    force: bool = False,
) -> Verdict:
    """Judge replacing ``current`` (the bundle in force, parsed, and its store items) with ``new``
    at ``now`` (aware UTC). The items supply the rotation states (``rotation.json``) that decide
    which roots are released, and the JWK Sets (``jwks.json``) the JWT keys each publishes.
    ``force``: the operator's explicit override (``--force``). Pure."""
    from .jwt_svid import dropped_keys

    released_jwt = released_jwt_keys(current_items, now)
    dropped_kids = dropped_keys(current_items.get(JWKS), new_items.get(JWKS), released_jwt)
    jwt_ok = force or not dropped_kids
    active_root = current.anchor_for(current.issuer_chain[-1])
    if active_root is None or active_root in new.trust_anchors:
        return Verdict(jwt_ok, dropped_jwt_keys=dropped_kids)
    released = fingerprint(active_root) in released_roots(current_items, new_items, now)
    return Verdict((released or force) and jwt_ok, active_root, released, dropped_kids)


def matches_record(record: Mapping[str, bytes], items: Mapping[str, bytes]) -> bool:
    """Whether ``record`` (a store's record of the last accepted bundle: public items) is the
    public part of ``items``: the bundle was accepted, or written deliberately."""
    return dict(record) == public_items(items)


def judge_against_record(
    record: Mapping[str, bytes] | None,
    new: PublicBundle,
    new_items: Mapping[str, bytes],
    now: datetime,
) -> Verdict:
    """Judge the store's newest bundle (``new``, parsed, and its items) against the store's
    record of the last accepted bundle (``record``: public items, or None when the store has
    none). The record's bundle itself, or no record: allowed. A record that cannot be parsed
    judges nothing (allowed: it is a derived copy). Otherwise :func:`judge_replacement` with
    the record as the bundle in force. Pure."""
    if not record or matches_record(record, new_items):
        return Verdict(True)
    try:
        current = parse_public_bundle(record)
    except BundleError:
        return Verdict(True)
    return judge_replacement(current, record, new, new_items, now)


def refusal_message(verdict: Verdict, where: str) -> str:
    """The operator's sentence for a refused ``verdict`` about the bundle in ``where``."""
    root = verdict.dropped_root
    if root is None and verdict.dropped_jwt_keys:
        return (
            f"the trust bundle in {where} does not publish the JWT key(s) "
            f"{', '.join(verdict.dropped_jwt_keys)} of the current jwks.json; applying it would make "
            "every JWT-SVID they signed fail to verify. Keep them in jwks.json, or force the change "
            "explicitly"
        )
    subject = root.subject.rfc4514_string() if root is not None else "?"
    return (
        f"the trust bundle in {where} does not include the active root ({subject}); applying it "
        "would break every workload holding a current certificate. Rotate the root instead, or "
        "force the change explicitly"
    )


def check_replacement(
    current: PublicBundle,
    current_items: Mapping[str, bytes],
    new: PublicBundle,
    new_items: Mapping[str, bytes],
    now: datetime,
    where: str,
    *,
    force: bool = False,
) -> None:
    """:func:`judge_replacement`, raising BundleError (reason ``bundle_invalid``) for a refusal;
    ``where`` names the replacement's location in the message."""
    verdict = judge_replacement(current, current_items, new, new_items, now, force=force)
    if verdict.allowed:
        return
    raise BundleError(refusal_message(verdict, where))


def check_item_replacement(
    current_items: Mapping[str, bytes],
    new_items: Mapping[str, bytes],
    now: datetime,
    where: str,
    labels: Mapping[str, str] | None = None,
    *,
    force: bool = False,
) -> None:
    """:func:`check_replacement` for two sets of store items (both parsed here; ``labels`` name
    the items in errors). Raises BundleError when either public part is unusable or the
    replacement is refused."""
    current = parse_public_bundle(current_items, labels)
    new = parse_public_bundle(new_items, labels)
    check_replacement(current, current_items, new, new_items, now, where, force=force)


def kept_root_key(current_items: Mapping[str, bytes], new: PublicBundle) -> bytes | None:
    """The current ``root.key`` when its root stays among ``new``'s trust anchors (a replacement
    without a root key of its own keeps it, so issuer rotation stays possible); None otherwise,
    also for a root key that cannot be read."""
    raw = current_items.get(ROOT_KEY)
    if raw is None:
        return None
    try:
        public = public_key_der(load_private_key(raw).public_key())
    except ValueError:
        return None
    if any(public_key_der(a.public_key()) == public for a in new.trust_anchors):
        return raw
    return None
