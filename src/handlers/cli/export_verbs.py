"""``sentryca bundle export`` (a backup: every item, private keys included) and ``sentryca bundle
show`` (the public part only: trust anchors and issuer chain, never a key), design §5.5.

Two verbs rather than ``export --public``: what ``export`` writes is a file store that ``import
--from`` restores, so it always holds the keys; what ``show`` writes is what may be handed out,
read from the store's public part alone (which needs no access to the keys), so no flag can turn
one into the other by mistake."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from adapters.kms import open_key as open_kms_key
from ca_core.bundle import (
    ANCHORS,
    ISSUER_CHAIN,
    ISSUER_KEY,
    ISSUER_KEY_REF,
    JWKS,
    JWT_KEY,
    ROOT_KEY,
    ROOT_KEY_REF,
    ROTATION_STATE,
)
from ca_core.config import STORE_OPTIONS, add_options
from ca_core.errors import CAError
from sentryca_client.files import write_file

from .common import BACKUPS, USAGE, CommandError, new_backup_directory, open_store

# Items holding private keys (rotation.json holds those of a prepared root or issuer).
SECRET_ITEMS = (ISSUER_KEY, ROOT_KEY, JWT_KEY, ROTATION_STATE)


def add_parsers(bundle: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``show`` to the ``bundle`` verbs."""
    p = bundle.add_parser(
        "export",
        allow_abbrev=False,
        help="back up the store's bundle, private keys included, to a directory (file-store layout)",
    )
    add_options(p, STORE_OPTIONS)
    p.add_argument(
        "--out",
        help=f"a new or empty directory (default: a new {BACKUPS}/<UTC time>/, mode 0700; "
        ".sentry/ is in the repository's .gitignore)",
    )
    p.set_defaults(func=cmd_bundle_export)
    p = bundle.add_parser(
        "show",
        allow_abbrev=False,
        help="print the trust anchors and the issuer chain (PEM, no key), or write them to --out",
    )
    add_options(p, STORE_OPTIONS)
    p.add_argument(
        "--out",
        help="a directory to write ca.crt (trust anchors) and issuer.crt (issuer chain) into, 0644; "
        "never a directory holding keys",
    )
    p.set_defaults(func=cmd_bundle_show)


def cmd_bundle_export(args: argparse.Namespace) -> int:
    """Write the store's bundle, every item, to the empty directory ``--out`` (a file store;
    default :func:`new_backup_directory`) and say where the private keys now are. Raises
    CommandError (1) when the store is empty or ``--out`` holds a bundle."""
    from ca_core.bundle import parse_bundle
    from handlers.composition import directory_store, store_retry

    _, store = open_store(args)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        raise CommandError(f"{store.description} is empty; nothing to export")
    try:
        parse_bundle(current.items, store.labels(), open_key=open_kms_key)
    except CAError as e:
        print(f"warning: exporting a bundle that does not load: {e}", file=sys.stderr)
    out = Path(args.out) if args.out else new_backup_directory(datetime.now(UTC))
    if not directory_store(str(out)).create(current.items):
        raise CommandError(f"{out} already holds a trust bundle; choose an empty directory")
    print(f"exported {store.description} to {out} ({', '.join(sorted(current.items))})")
    in_kms = kms_references(current.items)
    if in_kms:
        print(
            f"not exported: the key(s) held by KMS ({', '.join(in_kms)}); {out} keeps only their "
            f"reference ({', '.join(i for i in (ROOT_KEY_REF, ISSUER_KEY_REF) if i in current.items)}"
            f"{', ' + ROTATION_STATE if ROTATION_STATE in current.items else ''}): KMS keys never leave "
            "KMS, so restoring this backup needs the same KMS keys, enabled, and the permission to "
            "sign with them"
        )
    secret = [i for i in SECRET_ITEMS if i in current.items]
    if secret:
        print(
            f"{out} holds private keys ({', '.join(secret)}; directory 0700, files 0600): keep it "
            "encrypted and access-controlled, never in version control. Hand out only the public "
            "part: `sentryca bundle show --out DIR`"
        )
    return 0


def kms_references(items: Mapping[str, bytes]) -> list[str]:
    """The KMS key references a bundle's items hold, each once: ``root.kms``, ``issuer.kms``, and
    a prepared root's ``key_uri`` and prepared issuers' ``issuer_key_uri`` in ``rotation.json``."""
    import json

    refs = []
    for item in (ROOT_KEY_REF, ISSUER_KEY_REF):
        if item in items:
            refs.append(items[item].decode("ascii", errors="replace").strip())
    try:
        doc = json.loads(items[ROTATION_STATE]) if ROTATION_STATE in items else {}
        slots = [doc.get("root", {}).get("prepared"), doc.get("issuer", {}).get("prepared")]
    except (ValueError, KeyError, TypeError, AttributeError):
        slots = []
    for slot in slots:
        for field in ("key_uri", "issuer_key_uri"):
            if isinstance(slot, dict) and isinstance(slot.get(field), str):
                refs.append(slot[field])
    return list(dict.fromkeys(refs))


def cmd_bundle_show(args: argparse.Namespace) -> int:
    """The store's public part, verified (anchors self-signed, chain to an anchor): to stdout as
    PEM (``# ca.crt`` then ``# issuer.crt``, then ``# jwks.json`` when there is one), or into
    ``--out`` as ``ca.crt``, ``issuer.crt`` and ``jwks.json`` (0644, replaced atomically). Reads
    no key. Raises CommandError (1) for an empty store, (2) for an ``--out`` that holds keys or
    cannot be written; BundleError for a public part that does not verify."""
    from ca_core.bundle import parse_public_bundle
    from handlers.composition import store_retry

    _, store = open_store(args)
    stored = store_retry().run(f"read {store.description}", store.load_public)
    if stored is None:
        raise CommandError(f"{store.description} is empty; no trust anchors to show")
    public = parse_public_bundle(stored.items, store.labels())
    if not args.out:
        anchors = len(public.trust_anchors)
        sys.stdout.write(f"# {ANCHORS}: the trust anchors ({anchors}) of {store.description}\n")
        sys.stdout.write(public.anchors_pem.decode())
        sys.stdout.write(f"# {ISSUER_CHAIN}: the issuer chain ({len(public.issuer_chain)}), issuer first\n")
        sys.stdout.write(public.issuer_chain_pem.decode())
        if public.jwks is not None:
            sys.stdout.write(f"# {JWKS}: the JWK Set verifying the CA's JWT-SVIDs\n")
            sys.stdout.write(public.jwks.decode(errors="replace").rstrip("\n") + "\n")
        return 0
    out = Path(args.out)
    keys = [name for name in (*SECRET_ITEMS, "..data") if os.path.lexists(out / name)]
    if keys:
        raise CommandError(
            f"--out {out} holds {', '.join(keys)}: a store or a backup, not a directory to hand out; "
            "nothing was written. Choose another directory",
            USAGE,
        )
    try:
        out.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_file(out / ANCHORS, public.anchors_pem, 0o644)
        write_file(out / ISSUER_CHAIN, public.issuer_chain_pem, 0o644)
        if public.jwks is not None:
            write_file(out / JWKS, public.jwks, 0o644)
    except OSError as e:
        raise CommandError(f"--out {out}: cannot write ({e.strerror})", USAGE) from None
    print(
        f"wrote the public part of {store.description} to {out}: {ANCHORS} "
        f"({len(public.trust_anchors)} trust anchor(s)) and {ISSUER_CHAIN}"
        + (f" and {JWKS}" if public.jwks is not None else "")
        + "; no private key"
    )
    return 0
