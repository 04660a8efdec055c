"""The ``rotation.json`` document read leniently, without the rotation machinery (SPEC §5, §9).

What needs only a few fields of a rotation state, and must stay cheap to import (the expiry
function reads the public part on every cold start): the end of each prepared signing chain
(for signing coverage) and the roots a rotation removed (for trust continuity). The full,
strict reading and every rotation step are ``ca_core.rotation``'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography import x509

from .bundle import ROTATION_STATE, fingerprint
from .errors import BundleError

FORMAT = 1  # the version of the document this code reads and writes


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
    signing coverage (SPEC §9): a prepared root counts only while it is among ``anchors``, each
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


def released_roots(items: Mapping[str, bytes]) -> frozenset[str]:
    """Fingerprints of the roots a bundle's rotation state records as removed by rotation (for
    ``bundle.check_trust_continuity``). Lenient: unreadable → empty."""
    raw = items.get(ROTATION_STATE)
    if not raw:
        return frozenset()
    try:
        doc = load_document(raw, ROTATION_STATE)
    except BundleError:
        return frozenset()
    root = doc.get("root")
    removed = root.get("removed") if isinstance(root, dict) else None
    if not isinstance(removed, list):
        return frozenset()
    return frozenset(str(e["sha256"]) for e in removed if isinstance(e, dict) and "sha256" in e)
