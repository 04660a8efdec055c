"""The ``jwt`` section of ``rotation.json`` (design §5.14, §5.17), strictly: written
(:func:`encode_jwt`), read (:func:`parse_jwt`, with :mod:`.codec`'s reader) and described for
operators (:func:`describe_jwt`). The format is in :mod:`.codec`'s docstring."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..bundle import TrustBundle
from ..jwt_svid import JwtAlgorithm, entry_thumbprint, parse_jwks, thumbprint
from ..keys import PrivateKey, private_key_pem
from .jwt_keys import active_kid
from .state import (
    REMOVED_HISTORY,
    PreparedJwtKey,
    RemovedJwtKey,
    RetiringJwtKey,
    RotationState,
    iso,
)

if TYPE_CHECKING:
    from .codec import _Reader


def _opt_iso(t: datetime | None) -> str | None:
    return None if t is None else iso(t)


def _pem_key(key: PrivateKey) -> str:
    return private_key_pem(key).decode("ascii")


def encode_jwt(state: RotationState, bundle: TrustBundle, jwt_key: PrivateKey) -> dict[str, Any]:
    """The ``jwt`` section for ``state`` of ``bundle``, whose JWT key is ``jwt_key``."""
    prepared = None
    if (p := state.prepared_jwt) is not None:
        prepared = {
            "kid": p.kid,
            "thumbprint": thumbprint(p.key).hex(),
            "alg": p.algorithm.value,
            "since": iso(p.since),
            "activate_after": iso(p.activate_after),
            "trigger": p.trigger,
            "key": _pem_key(p.key),
        }
    return {
        "active": {
            "kid": active_kid(bundle),
            "thumbprint": thumbprint(jwt_key).hex(),
            "since": _opt_iso(state.jwt_since),
        },
        "prepared": prepared,
        "retiring": [
            {
                "kid": r.kid,
                "thumbprint": r.thumbprint,
                "since": iso(r.since),
                "prune_after": iso(r.prune_after),
            }
            for r in state.retiring_jwt
        ],
        "removed": [
            {"kid": r.kid, "thumbprint": r.thumbprint, "at": iso(r.at), "reason": r.reason}
            for r in state.removed_jwt
        ],
    }


def parse_jwt(
    r: _Reader, doc: dict[str, Any], bundle: TrustBundle
) -> tuple[datetime | None, PreparedJwtKey | None, tuple[RetiringJwtKey, ...], tuple[RemovedJwtKey, ...]]:
    """The ``jwt`` section (design §5.17): (since, prepared, retiring, removed). Strict for what
    a step acts on: a prepared key must be published in ``jwks.json``, fit its ``alg`` and not be
    the signing key. Retiring records of keys no longer published (or of the signing key) are
    dropped; an ``active`` record of another key leaves its time unknown."""
    if doc.get("jwt") is None or bundle.jwt_key is None or bundle.jwks is None:
        return None, None, (), ()
    jwt_doc = r.obj(doc["jwt"], "jwt")
    active_tp = thumbprint(bundle.jwt_key).hex()
    published = {entry_thumbprint(e) for e in parse_jwks(bundle.jwks)}
    since = None
    if (active := jwt_doc.get("active")) is not None:
        active = r.obj(active, "jwt.active")
        t = r.optional_time(active, "since", "jwt.active")
        since = t if active.get("thumbprint") == active_tp else None
    prepared = None
    if (p := jwt_doc.get("prepared")) is not None:
        where = "jwt.prepared"
        p = r.obj(p, where)
        key = r.key(p, "key", where)
        try:
            algorithm = JwtAlgorithm.parse(r.text(p, "alg", where))
        except ValueError as e:
            raise r.fail(f"{where}.alg: {e}") from None
        if (problem := algorithm.key_problem(key)) is not None:
            raise r.fail(f"{where}.key: {problem}")
        tp = thumbprint(key).hex()
        if tp == active_tp:
            raise r.fail(f"{where}: the prepared JWT key is the signing key (jwt.key)")
        if tp not in published:
            raise r.fail(f"{where}: the prepared JWT key is not published in jwks.json")
        prepared = PreparedJwtKey(
            key,
            r.text(p, "kid", where),
            algorithm,
            r.time(p, "since", where),
            r.time(p, "activate_after", where),
            r.trigger(p, where),
        )
    retiring = []
    for n, entry in enumerate(r.list(jwt_doc, "retiring", "jwt")):
        where = f"jwt.retiring[{n}]"
        entry = r.obj(entry, where)
        record = RetiringJwtKey(
            str(entry.get("kid", "")),
            r.text(entry, "thumbprint", where),
            r.time(entry, "since", where),
            r.time(entry, "prune_after", where),
        )
        if record.thumbprint != active_tp and record.thumbprint in published:
            retiring.append(record)
    removed = []
    for n, entry in enumerate(r.list(jwt_doc, "removed", "jwt")):
        where = f"jwt.removed[{n}]"
        entry = r.obj(entry, where)
        removed.append(
            RemovedJwtKey(
                str(entry.get("kid", "")),
                r.text(entry, "thumbprint", where),
                r.time(entry, "at", where),
                r.text(entry, "reason", where),
            )
        )
    return since, prepared, tuple(retiring), tuple(removed[-REMOVED_HISTORY:])


def describe_jwt(state: RotationState, bundle: TrustBundle) -> list[str]:
    """Lines for operators on the JWT keys (design §5.17): each key of ``jwks.json`` with its
    state (active, prepared, retiring, or published: not tracked by the rotation) and since when."""
    if bundle.jwt_key is None or bundle.jwks is None:
        return []
    active_tp = thumbprint(bundle.jwt_key).hex()
    prepared = state.prepared_jwt
    prepared_tp = thumbprint(prepared.key).hex() if prepared is not None else None
    retiring = {r.thumbprint: r for r in state.retiring_jwt}
    lines = []
    for entry in parse_jwks(bundle.jwks):
        tp, kid = entry_thumbprint(entry), entry.get("kid", "?")
        alg = entry.get("alg", "?")
        if tp == active_tp:
            since = f"  since {iso(state.jwt_since)}" if state.jwt_since else ""
            lines.append(f"jwt     active    kid {kid} ({alg}){since}  signs")
        elif prepared is not None and tp == prepared_tp:
            lines.append(
                f"jwt     prepared  kid {kid} ({alg})  since {iso(prepared.since)} ({prepared.trigger})  "
                f"signs from {iso(prepared.activate_after)}"
            )
        elif tp in retiring:
            t = retiring[tp]
            lines.append(
                f"jwt     retiring  kid {kid} ({alg})  since {iso(t.since)}  "
                f"removed after {iso(t.prune_after)}"
            )
        else:
            lines.append(f"jwt     published kid {kid} ({alg})  (not tracked by the rotation)")
    for x in state.removed_jwt[-3:]:
        lines.append(f"jwt     removed   kid {x.kid}  at {iso(x.at)} ({x.reason})")
    return lines
