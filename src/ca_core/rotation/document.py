"""The ``rotation.json`` document read leniently, without the rotation machinery (design §5, §9).

What needs only a few fields of a rotation state, and must stay cheap to import (the expiry
function reads the public part on every cold start): the end of each prepared signing chain
(for signing coverage), the roots a replacement bundle may drop (for trust continuity), and the
public part every store publishes (the document without keys). Imports nothing of the
rotation machinery: the full, strict reading is :mod:`.codec`'s, every rotation step
:mod:`.rules`' and :mod:`.actions`'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography import x509

from ..bundle import (
    PUBLIC_ITEMS,
    ROTATION_STATE,
    PublicBundle,
    chain_not_after,
    fingerprint,
    parse_public_bundle,
)
from ..errors import BundleError

FORMAT = 1  # the version of the document this code reads and writes
SECRET_FIELDS = ("key", "issuer_chain", "issuer_key")  # of a prepared slot: never in the public part


def load_document(raw: bytes, item: str) -> dict[str, Any]:
    """The JSON object of a rotation state. Raises BundleError naming ``item`` when it is not
    JSON, not an object, or of another format."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("is not JSON", item=item) from None
    if not isinstance(doc, dict):
        raise BundleError("the document is not an object", item=item)
    if doc.get("format") != FORMAT:
        raise BundleError(f"has format {doc.get('format')!r}; this version reads format {FORMAT}", item=item)
    return doc


def prepared_not_after(raw: bytes | None, anchors: tuple[x509.Certificate, ...]) -> tuple[datetime, ...]:
    """NotAfter of each prepared signing chain a rotation state (full or public) records, for
    signing coverage (design §9): a prepared root counts only while it is among ``anchors``, each
    chain until its earliest NotAfter capped by its root's. Lenient: unreadable → ()."""
    if not raw:
        return ()
    try:
        doc = load_document(raw, ROTATION_STATE)
    except BundleError:
        return ()
    by_fp = {fingerprint(a): a for a in anchors}
    out = []
    for section, root_field in (("root", "sha256"), ("issuer", "root")):
        prepared = doc.get(section, {}).get("prepared") if isinstance(doc.get(section), dict) else None
        if not isinstance(prepared, dict):
            continue
        root = by_fp.get(str(prepared.get(root_field)))
        try:
            not_after = datetime.fromisoformat(str(prepared.get("not_after")))
        except ValueError:
            continue
        if root is not None and not_after.tzinfo is not None:
            out.append(min(not_after, root.not_valid_after_utc))
    return tuple(out)


def released_roots(
    old_items: Mapping[str, bytes], new_items: Mapping[str, bytes], now: datetime
) -> frozenset[str]:
    """Fingerprints of the current bundle's roots that a replacement may leave out of its trust
    anchors (for ``bundle.check_trust_continuity``, design §5), judged at ``now`` (aware UTC).

    old_items: the store items of the bundle in force (its ``ca.crt``, ``issuer.crt`` and
    ``rotation.json``); new_items: those of the replacement. A root is released when:

    - it has expired (an anchor of ``old_items`` with NotAfter <= now): nothing verifies to it;
    - pruned: the CURRENT state (``old_items``' rotation state) lists it as retiring and its
      ``prune_after`` has passed: every leaf it covered has expired. What the new bundle's state
      says about pruning counts for nothing (any bundle can carry any ``removed`` list);
    - activated and pruned at once: it is the current active root, its signing chain in the
      current bundle has expired, and the new bundle's active root is the root the CURRENT state
      has prepared (what :func:`.rules.advance` writes when the active chain expired: the prepared root
      takes over early and the old one, covering no valid leaf, goes in the same step);
    - emergency: the new state records it as removed with reason ``emergency`` at T, and the
      new bundle's active root is the root that state records as active since T or later (both
      written in one step by ``sentryca rotate root --emergency``).

    Lenient: an unreadable part releases nothing."""
    released: set[str] = set()
    old, new_active = _public(old_items), _active_root(new_items)
    if old is not None:
        released.update(fingerprint(a) for a in old.trust_anchors if a.not_valid_after_utc <= now)
    old_root = _root_section(old_items)
    for entry in _entries(old_root, "retiring"):
        prune_after = _time(entry.get("prune_after"))
        if prune_after is not None and prune_after <= now:
            released.add(str(entry["sha256"]))
    prepared = _object(old_root.get("prepared"))
    if old is not None and new_active is not None and prepared.get("sha256") == new_active:
        active = old.anchor_for(old.issuer_chain[-1])
        if active is not None and chain_not_after((*old.issuer_chain, active)) <= now:
            released.add(fingerprint(active))
    new_root = _root_section(new_items)
    active_record = _object(new_root.get("active"))
    since = _time(active_record.get("since"))
    if since is None or new_active is None or active_record.get("sha256") != new_active:
        return frozenset(released)
    for entry in _entries(new_root, "removed"):
        at = _time(entry.get("at"))
        if entry.get("reason") == "emergency" and at is not None and at <= since:
            released.add(str(entry["sha256"]))
    return frozenset(released)


def released_jwt_keys(old_items: Mapping[str, bytes], now: datetime) -> frozenset[str]:
    """Thumbprints (RFC 7638 SHA-256, hex) of JWT keys a replacement may leave out of
    ``jwks.json`` (design §5.4, §5.17): the CURRENT state lists them as retiring and their
    ``prune_after`` has passed, so every token they signed has expired. What the new state says
    counts for nothing. Lenient: an unreadable state releases nothing."""
    released = set()
    for entry in _entries(_section(old_items, "jwt"), "retiring", "thumbprint"):
        prune_after = _time(entry.get("prune_after"))
        if prune_after is not None and prune_after <= now:
            released.add(str(entry["thumbprint"]))
    return frozenset(released)


def jwt_key_states(items: Mapping[str, bytes]) -> dict[str, str]:
    """Thumbprint (hex) → the state of that JWT key as the rotation state (full or public)
    records it, for operators (design §5.17): ``active since T``, ``prepared since T, signs from
    T``, ``retiring since T, removed after T``. Lenient: unreadable → {}."""
    section = _section(items, "jwt")
    states: dict[str, str] = {}
    for entry in _entries(section, "retiring", "thumbprint"):
        states[str(entry["thumbprint"])] = (
            f"retiring since {entry.get('since', '?')}, removed after {entry.get('prune_after', '?')}"
        )
    prepared = _object(section.get("prepared"))
    if "thumbprint" in prepared:
        states[str(prepared["thumbprint"])] = (
            f"prepared since {prepared.get('since', '?')}, signs from {prepared.get('activate_after', '?')}"
        )
    active = _object(section.get("active"))
    if "thumbprint" in active:
        since = active.get("since")
        states[str(active["thumbprint"])] = "active" + (f" since {since}" if since else " (since unknown)")
    return states


def _root_section(items: Mapping[str, bytes]) -> dict[str, Any]:
    return _section(items, "root")


def _section(items: Mapping[str, bytes], name: str) -> dict[str, Any]:
    raw = items.get(ROTATION_STATE)
    if not raw:
        return {}
    try:
        doc = load_document(raw, ROTATION_STATE)
    except BundleError:
        return {}
    section = doc.get(name)
    return section if isinstance(section, dict) else {}


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else the empty one (lenient)."""
    return value if isinstance(value, dict) else {}


def _entries(section: dict[str, Any], key: str, ident: str = "sha256") -> list[dict[str, Any]]:
    value = section.get(key)
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, dict) and ident in e]


def _time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _public(items: Mapping[str, bytes]) -> PublicBundle | None:
    try:
        return parse_public_bundle(items)
    except BundleError:
        return None


def _active_root(items: Mapping[str, bytes]) -> str | None:
    """Fingerprint of the anchor the issuer chain of ``items`` verifies to, or None."""
    public = _public(items)
    root = None if public is None else public.anchor_for(public.issuer_chain[-1])
    return None if root is None else fingerprint(root)


def public_state(raw: bytes) -> bytes | None:
    """``rotation.json`` without keys and prepared issuer chains (the store's public part), or
    None when ``raw`` is not a rotation state document."""
    try:
        doc = load_document(raw, ROTATION_STATE)
    except BundleError:
        return None
    for section in ("root", "issuer", "jwt"):
        prepared = (doc.get(section) or {}).get("prepared") if isinstance(doc.get(section), dict) else None
        if isinstance(prepared, dict):
            for name in SECRET_FIELDS:
                prepared.pop(name, None)
    return (json.dumps(doc, indent=1) + "\n").encode("ascii")


def public_items(items: Mapping[str, bytes]) -> dict[str, bytes]:
    """The public part of a bundle's store items: ``ca.crt``, ``issuer.crt`` and, when present
    and readable, ``rotation.json`` reduced by :func:`public_state`. Stores publish this."""
    public = {k: items[k] for k in PUBLIC_ITEMS if k in items}
    if ROTATION_STATE in items and (reduced := public_state(items[ROTATION_STATE])) is not None:
        public[ROTATION_STATE] = reduced
    return public
