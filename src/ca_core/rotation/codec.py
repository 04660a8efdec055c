"""The rotation state document, strictly (design §5): :func:`encode_state`, :func:`parse_state`,
and :func:`describe` for operators.

The state (``rotation.json``) is a JSON object, format 1::

    {"format": 1,
     "root": {"active": {"sha256": FP, "since": T},
              "prepared": {"sha256": FP, "subject": S, "not_after": T, "since": T,
                           "activate_after": T, "trigger": "manual"|"auto",
                           "key": PEM (or "key_uri": "kms://..." for a KMS root key),
                           "issuer_chain": PEM, "issuer_key": PEM (or "issuer_key_uri":
                           "kms://..." for an issuer key in KMS)} | null,
              "retiring": [{"sha256": FP, "subject": S, "since": T, "prune_after": T}],
              "removed": [{"sha256": FP, "subject": S, "at": T,
                           "reason": "pruned"|"expired"|"emergency"}],
              "leaf_bound_seconds": N},
     "issuer": {"active": {"serial": HEX, "since": T},
                "prepared": {"serial": HEX, "subject": S, "root": FP, "not_after": T, "since": T,
                             "activate_after": T, "trigger": ..., "issuer_chain": PEM,
                             "issuer_key": PEM (or "issuer_key_uri": "kms://...")} | null},
     "jwt": {"active": {"kid": K, "thumbprint": TP, "since": T},
             "prepared": {"kid": K, "thumbprint": TP, "alg": A, "since": T,
                          "activate_after": T, "trigger": ..., "key": PEM} | null,
             "retiring": [{"kid": K, "thumbprint": TP, "since": T, "prune_after": T}],
             "removed": [{"kid": K, "thumbprint": TP, "at": T, "reason": "pruned"}]}}

``jwt`` is there only when the bundle has a JWT key (TP: RFC 7638 SHA-256 thumbprint, hex);
a reader that does not know it ignores it.

FP: SHA-256 fingerprint (hex) of a certificate; T: ISO 8601 UTC. A prepared root's certificate
is the anchor with that fingerprint. ``not_after`` of a prepared chain is the earliest NotAfter of
its certificates (what signing coverage counts). The public part of a store carries the same
document without ``key``, ``issuer_chain`` and ``issuer_key`` (:func:`.document.public_items`),
so the expiry function can count prepared chains without any key. ``removed`` keeps the last
:data:`.state.REMOVED_HISTORY` roots. Trust continuity (:func:`.document.released_roots`)
accepts a bundle dropping the active root only when the CURRENT state scheduled its pruning and
the time has come, when it has expired, or when the new state records its emergency removal
together with the new active root since then; a ``removed`` entry alone releases nothing.

Everything a step acts on is read strictly here; what needs only a few fields and must stay cheap
to import (the expiry function, trust continuity, the stores' public part) reads the same
document leniently in :mod:`.document`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from ..bundle import (
    ROTATION_STATE,
    TrustBundle,
    certificates_pem,
    fingerprint,
    is_ca,
    issued_by,
    parse_certificates,
)
from ..errors import BundleError
from ..keys import KeyOpener, PrivateKey, key_uri_of, load_private_key, private_key_pem, public_key_der
from .document import FORMAT, load_document
from .state import (
    AUTO,
    EMPTY,
    MANUAL,
    REMOVED_HISTORY,
    PreparedIssuer,
    PreparedRoot,
    RemovedRoot,
    RetiringRoot,
    RotationState,
    active_root,
    find_anchor,
    iso,
    subject_of,
)


def _pem_key(key: PrivateKey) -> str:
    return private_key_pem(key).decode("ascii")


def _root_key_entry(key: PrivateKey) -> dict[str, str]:
    # A KMS root key is stored as its reference ("key_uri"), never as key material.
    uri = key_uri_of(key)
    return {"key_uri": uri} if uri is not None else {"key": _pem_key(key)}


def _issuer_key_entry(key: PrivateKey) -> dict[str, str]:
    # An issuer key in KMS is stored as its reference ("issuer_key_uri"), never as key material.
    uri = key_uri_of(key)
    return {"issuer_key_uri": uri} if uri is not None else {"issuer_key": _pem_key(key)}


def encode_state(state: RotationState, bundle: TrustBundle) -> bytes:
    """``rotation.json`` for ``state`` of ``bundle`` (the module docstring's format)."""
    root, issuer = active_root(bundle), bundle.issuer
    prepared_root = prepared_issuer = None
    if (p := state.prepared_root) is not None:
        prepared_root = {
            "sha256": fingerprint(p.root),
            "subject": subject_of(p.root),
            "not_after": iso(p.not_after),
            "since": iso(p.since),
            "activate_after": iso(p.activate_after),
            "trigger": p.trigger,
            **_root_key_entry(p.root_key),
            "issuer_chain": certificates_pem(p.issuer_chain).decode("ascii"),
            **_issuer_key_entry(p.issuer_key),
        }
    if (q := state.prepared_issuer) is not None:
        prepared_issuer = {
            "serial": f"{q.issuer_chain[0].serial_number:x}",
            "subject": subject_of(q.issuer_chain[0]),
            "root": fingerprint(q.root),
            "not_after": iso(q.not_after),
            "since": iso(q.since),
            "activate_after": iso(q.activate_after),
            "trigger": q.trigger,
            "issuer_chain": certificates_pem(q.issuer_chain).decode("ascii"),
            **_issuer_key_entry(q.issuer_key),
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
                    "since": iso(r.since),
                    "prune_after": iso(r.prune_after),
                }
                for r in state.retiring
            ],
            "removed": [
                {"sha256": r.sha256, "subject": r.subject, "at": iso(r.at), "reason": r.reason}
                for r in state.removed
            ],
            "leaf_bound_seconds": None if state.leaf_bound is None else int(state.leaf_bound.total_seconds()),
        },
        "issuer": {
            "active": {"serial": f"{issuer.serial_number:x}", "since": _opt_iso(state.issuer_since)},
            "prepared": prepared_issuer,
        },
    }
    if bundle.jwt_key is not None:
        from .jwt_codec import encode_jwt

        doc["jwt"] = encode_jwt(state, bundle, bundle.jwt_key)
    return (json.dumps(doc, indent=1) + "\n").encode("ascii")


def _opt_iso(t: datetime | None) -> str | None:
    return None if t is None else iso(t)


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

    def time(self, obj: dict[str, Any], key: str, where: str) -> datetime:
        value = obj.get(key)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key} is missing or not a time")
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(f"{where}.{key} is not an ISO 8601 time: {value[:40]!r}") from None
        if t.tzinfo is None:
            raise self.fail(f"{where}.{key} has no time zone: {value[:40]!r}")
        return t

    def optional_time(self, obj: dict[str, Any], key: str, where: str) -> datetime | None:
        """:meth:`time`, or None when ``key`` is absent or null."""
        return None if obj.get(key) is None else self.time(obj, key, where)

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
        if not isinstance(value, str) or value not in (MANUAL, AUTO):
            raise self.fail(f"{where}.trigger must be 'manual' or 'auto'")
        return value


def parse_state(
    items: Mapping[str, bytes],
    bundle: TrustBundle,
    labels: Mapping[str, str] | None = None,
    *,
    open_key: KeyOpener | None = None,
) -> RotationState:
    """The rotation state stored with ``bundle`` (``items[rotation.json]``; none → the empty state).

    Strict for everything a step would act on: the prepared root must be one of the anchors, its
    key must match it, its issuer chain must verify to it and the issuer key match; a prepared
    issuer must verify to the active root; times must be ISO 8601 with a zone. Records of
    retiring roots that are no longer anchors (or are the active root) are dropped, and an
    ``active`` record naming another root or issuer leaves its time unknown. Raises BundleError
    naming ``rotation.json`` (or its label) and the problem. A prepared root or issuer key in KMS
    (``key_uri``, ``issuer_key_uri``) is opened with ``open_key`` (the adapter's); without one,
    BundleError.
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
        since = r.optional_time(active, "since", "root.active")
        root_since = since if active.get("sha256") == active_fp else None
    issuer_since = None
    if (active := issuer_doc.get("active")) is not None:
        active = r.obj(active, "issuer.active")
        since = r.optional_time(active, "since", "issuer.active")
        issuer_since = since if active.get("serial") == f"{bundle.issuer.serial_number:x}" else None

    prepared_root = None
    if (p := root_doc.get("prepared")) is not None:
        where = "root.prepared"
        p = r.obj(p, where)
        cert = find_anchor(bundle, r.text(p, "sha256", where))
        if cert is None:
            raise r.fail(f"{where}: the prepared root is not among the trust anchors")
        if cert == root:
            raise r.fail(f"{where}: the prepared root is the active root")
        if "key_uri" in p:
            uri = r.text(p, "key_uri", where)
            if open_key is None:
                raise r.fail(f"{where}: the prepared root's key is {uri}; opening it needs KMS access")
            root_key = open_key(uri)
        else:
            root_key = r.key(p, "key", where)
        if public_key_der(root_key.public_key()) != public_key_der(cert.public_key()):
            raise r.fail(f"{where}.key does not match the prepared root")
        chain, key = _prepared_chain(r, p, where, cert, open_key)
        prepared_root = PreparedRoot(
            cert,
            root_key,
            chain,
            key,
            r.time(p, "since", where),
            r.time(p, "activate_after", where),
            r.trigger(p, where),
        )
        _check_not_after(r, p, where, prepared_root.not_after)

    prepared_issuer = None
    if (q := issuer_doc.get("prepared")) is not None:
        where = "issuer.prepared"
        q = r.obj(q, where)
        chain, key = _prepared_chain(r, q, where, root, open_key)
        prepared_issuer = PreparedIssuer(
            chain,
            key,
            root,
            r.time(q, "since", where),
            r.time(q, "activate_after", where),
            r.trigger(q, where),
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
            r.time(entry, "prune_after", where),
        )
        if sha != active_fp and find_anchor(bundle, sha) is not None:
            retiring.append(record)
    removed = []
    for n, entry in enumerate(r.list(root_doc, "removed", "root")):
        where = f"root.removed[{n}]"
        entry = r.obj(entry, where)
        removed.append(
            RemovedRoot(
                r.text(entry, "sha256", where),
                str(entry.get("subject", "")),
                r.time(entry, "at", where),
                r.text(entry, "reason", where),
            )
        )
    leaf_bound = root_doc.get("leaf_bound_seconds")
    if leaf_bound is not None and (
        not isinstance(leaf_bound, int) or isinstance(leaf_bound, bool) or leaf_bound < 0
    ):
        raise r.fail("root.leaf_bound_seconds is not a whole number of seconds")
    from .jwt_codec import parse_jwt  # here: it reads with this module's _Reader

    jwt = parse_jwt(r, doc, bundle)
    return RotationState(
        root_since,
        issuer_since,
        prepared_root,
        prepared_issuer,
        tuple(retiring),
        tuple(removed[-REMOVED_HISTORY:]),
        None if leaf_bound is None else timedelta(seconds=leaf_bound),
        *jwt,
    )


def _prepared_chain(
    r: _Reader, obj: dict[str, Any], where: str, root: x509.Certificate, open_key: KeyOpener | None
) -> tuple[tuple[x509.Certificate, ...], PrivateKey]:
    chain = r.chain(obj, "issuer_chain", where)
    if "issuer_key_uri" in obj:
        uri = r.text(obj, "issuer_key_uri", where)
        if open_key is None:
            raise r.fail(f"{where}: the prepared issuer's key is {uri}; opening it needs KMS access")
        key = open_key(uri)
    else:
        key = r.key(obj, "issuer_key", where)
    for n, cert in enumerate(chain):
        parent = chain[n + 1] if n + 1 < len(chain) else root
        if not is_ca(cert) or not issued_by(cert, parent):
            raise r.fail(f"{where}.issuer_chain does not verify to its root {subject_of(root)}")
    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):
        raise r.fail(f"{where}.issuer_key does not match its issuer certificate")
    return chain, key


def _check_not_after(r: _Reader, obj: dict[str, Any], where: str, actual: datetime) -> None:
    if r.time(obj, "not_after", where) != actual:
        raise r.fail(f"{where}.not_after does not match its certificates ({iso(actual)})")


# --- for operators -----------------------------------------------------------------------------


def describe(state: RotationState, bundle: TrustBundle) -> list[str]:
    """Lines for operators (``sentryca rotate status``): active, prepared and retiring slots."""
    root, issuer = active_root(bundle), bundle.issuer
    lines = [
        f"root    active    {subject_of(root)}  NotAfter {iso(root.not_valid_after_utc)}"
        + (f"  since {iso(state.root_since)}" if state.root_since else ""),
        f"issuer  active    serial {issuer.serial_number:x}  NotAfter {iso(issuer.not_valid_after_utc)}"
        + (f"  since {iso(state.issuer_since)}" if state.issuer_since else ""),
    ]
    if (p := state.prepared_root) is not None:
        lines.append(
            f"root    prepared  {subject_of(p.root)}  NotAfter {iso(p.root.not_valid_after_utc)}  "
            f"since {iso(p.since)} ({p.trigger})  activates at {iso(p.activate_after)}"
        )
    if (q := state.prepared_issuer) is not None:
        lines.append(
            f"issuer  prepared  serial {q.issuer_chain[0].serial_number:x}  NotAfter {iso(q.not_after)}  "
            f"since {iso(q.since)} ({q.trigger})  activates at {iso(q.activate_after)}"
        )
    for t in state.retiring:
        lines.append(
            f"root    retiring  {t.subject}  since {iso(t.since)}  removed after {iso(t.prune_after)}"
        )
    for x in state.removed[-3:]:
        lines.append(f"root    removed   {x.subject}  at {iso(x.at)} ({x.reason})")
    from .jwt_codec import describe_jwt

    return lines + describe_jwt(state, bundle)
