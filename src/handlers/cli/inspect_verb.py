"""``sentryca inspect``: the store's public part with the time each certificate has left, the
JWT keys its ``jwks.json`` publishes, and whether the whole bundle (keys, rotation state) is
usable (design §5.5)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from adapters.kms import open_key as open_kms_key
from ca_core.errors import CAError
from ca_core.expiry import check_expiry

from .common import open_store, shown_version

if TYPE_CHECKING:
    from adapters.stores import BundleStore
    from ca_core.bundle import PublicBundle


def cmd_inspect(args: argparse.Namespace) -> int:
    """Exit 0 when the whole bundle is usable, 1 when it is empty or unusable; the public part
    (anchors, issuer) is shown whenever it can be read, with the time each has left."""
    from ca_core.bundle import parse_bundle, parse_public_bundle
    from ca_core.errors import BundleError, Unavailable

    _, store = open_store(args)
    stored = store.load_public()
    if stored is None:
        evidence = store.held_before()
        if evidence is None:
            print(f"{store.description}: empty (no trust bundle yet; `sentryca serve` creates one)")
        else:
            print(
                f"{store.description}: empty, but it held a trust bundle before ({evidence}): restore "
                "it from a backup with `sentryca bundle import --from DIR` (docs/runbook.md, Restore)"
            )
        return 1
    public = parse_public_bundle(stored.items, store.labels())
    now = datetime.now(UTC)
    print(f"store: {store.description} (version {shown_version(store, stored)})")
    for f in check_expiry(public.anchors_pem, public.issuer_chain_pem, now):
        level = {logging.ERROR: "EXPIRED/INVALID", logging.WARNING: "EXPIRING", logging.DEBUG: "ok"}[f.level]
        not_after = f.not_after.isoformat() if f.not_after else "?"
        print(
            f"{f.role:6} {level:15} {_time_left(f.remaining):>20}  NotAfter {not_after}  "
            f"lifetime {days_hours(f.lifetime)}  {f.subject}"
        )
    if public.jwks is not None:
        from ca_core.jwt_svid import entry_thumbprint, parse_jwks
        from ca_core.rotation.document import jwt_key_states

        key_states = jwt_key_states(stored.items)
        for entry in parse_jwks(public.jwks):
            key_state = key_states.get(entry_thumbprint(entry) or "", "published")
            kid, alg = entry.get("kid", "?"), entry.get("alg", "?")
            print(f"jwks   key kid {kid}  {alg} {entry.get('kty')}  {key_state}")
    try:
        whole = store.load()
        if whole is None:
            raise BundleError("the keys are missing")
        for line in key_locations(whole.items, store.labels()):
            print(f"keys:  {line}")
        parse_bundle(whole.items, store.labels(), open_key=open_kms_key)
    except Unavailable as e:
        print(f"bundle: the keys cannot be read here ({e}); only the public part was checked")
        return 0
    except BundleError as e:
        print(f"bundle: UNUSABLE: {e}")
        return 1
    from ca_core.rotation.codec import describe, parse_state

    bundle = parse_bundle(whole.items, store.labels(), open_key=open_kms_key)
    try:
        state = parse_state(whole.items, bundle, store.labels(), open_key=open_kms_key)
    except BundleError as e:
        print(f"bundle: UNUSABLE: {e}")
        return 1
    for line in describe(state, bundle):
        print(f"rotation: {line}")
    if bundle.jwt_key is not None and bundle.jwks is not None:
        from ca_core.jwt_svid import algorithm_for_key, signing_key_id

        alg = algorithm_for_key(bundle.jwt_key)
        kid = signing_key_id(bundle.jwks, bundle.jwt_key)
        print(f"jwt: signing key kid {kid} ({alg.value if alg else '?'}), published in jwks.json")
    print("bundle: complete (anchors, issuer chain and key match)")
    _print_newest_against_record(store, whole.items, bundle, now)
    return 0


def key_locations(items: Mapping[str, bytes], labels: Mapping[str, str]) -> list[str]:
    """Where each CA key of the stored ``items`` lives, one line each (from the items alone, so
    it is shown even when KMS cannot be reached): the root key in KMS (``root.kms``: its
    reference), in the store (``root.key``) or not held; the issuer key in KMS (``issuer.kms``)
    or in the store; the JWT key in the store; a prepared root's and a prepared issuer's key in
    KMS or in the store (``rotation.json``)."""
    import json

    from ca_core.bundle import ISSUER_KEY, ISSUER_KEY_REF, JWT_KEY, ROOT_KEY, ROOT_KEY_REF, ROTATION_STATE

    def name(item: str) -> str:
        return labels.get(item, item)

    lines = []
    if ROOT_KEY_REF in items:
        ref = items[ROOT_KEY_REF].decode("ascii", errors="replace").strip()
        lines.append(f"root key in KMS: {ref} ({name(ROOT_KEY_REF)} holds only this reference)")
    elif ROOT_KEY in items:
        lines.append(f"root key in the store: {name(ROOT_KEY)}")
    else:
        lines.append("root key not held (the operator supplies new issuers: rotate issuer --issuer-cert)")
    if ISSUER_KEY_REF in items:
        ref = items[ISSUER_KEY_REF].decode("ascii", errors="replace").strip()
        lines.append(
            f"issuer key in KMS: {ref} ({name(ISSUER_KEY_REF)} holds only this reference; every leaf "
            "is signed by KMS)"
        )
    elif ISSUER_KEY in items:
        lines.append(f"issuer key in the store: {name(ISSUER_KEY)}")
    if JWT_KEY in items:
        lines.append(f"JWT key in the store: {name(JWT_KEY)}")
    try:
        doc = json.loads(items[ROTATION_STATE]) if ROTATION_STATE in items else {}
        prepared = doc.get("root", {}).get("prepared")
        prepared_issuer = doc.get("issuer", {}).get("prepared")
    except (ValueError, KeyError, TypeError, AttributeError):
        prepared = prepared_issuer = None  # an unreadable state is reported by its parse below
    if isinstance(prepared, dict):
        where = (
            f"in KMS: {prepared['key_uri']}"
            if "key_uri" in prepared
            else f"in the store: {name(ROTATION_STATE)}"
        )
        lines.append(f"prepared root's key {where}")
    for slot, entry in (("prepared root's issuer", prepared), ("prepared issuer", prepared_issuer)):
        if isinstance(entry, dict) and "issuer_key_uri" in entry:
            lines.append(f"{slot} key in KMS: {entry['issuer_key_uri']}")
        elif isinstance(entry, dict) and slot == "prepared issuer":
            lines.append(f"{slot} key in the store: {name(ROTATION_STATE)}")
    return lines


def _print_newest_against_record(
    store: BundleStore, items: Mapping[str, bytes], bundle: PublicBundle, now: datetime
) -> None:
    """When the store's newest bundle is not its record of the last accepted one: what a CA
    starting now does with it (design §5.4)."""
    from ca_core.continuity import judge_against_record, matches_record, refusal_message

    try:
        record = store.load_accepted()
    except CAError:
        return
    if record is None or matches_record(record.items, items):
        return
    verdict = judge_against_record(record.items, bundle, items, now)
    what = "a CA takes it" if verdict.allowed else f"REFUSED: {refusal_message(verdict, store.description)}"
    print(f"newest: the store's newest bundle is not its record of the last accepted one; {what}")


def days_hours(length: timedelta | None) -> str:
    """``7d 0h``, ``1d 0h15m`` (minutes only when not whole hours); ``?`` for None."""
    if length is None:
        return "?"
    seconds = int(length.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days}d {hours}h" + (f"{minutes}m" if minutes else "")


def _time_left(left: timedelta | None) -> str:
    if left is None:
        return "?"
    seconds = int(left.total_seconds())
    days, hours = abs(seconds) // 86400, abs(seconds) % 86400 // 3600
    return f"{days}d {hours}h left" if seconds > 0 else f"expired {days}d {hours}h ago"
