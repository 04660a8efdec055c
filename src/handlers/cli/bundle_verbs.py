"""``sentryca bundle init|import|regenerate`` (``inspect``: ``inspect_verb``; ``export`` and
``show``: ``export_verbs``): read or write the trust bundle in a store (design §5). Every write is a create
of an empty store or a replace of the version read (compare-and-swap), so a concurrent writer makes
the verb refuse, not overwrite."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adapters.kms import open_key as open_kms_key
from ca_core.config import SERVE_OPTIONS, STORE_OPTIONS, add_options
from ca_core.errors import CAError

from . import export_verbs, inspect_verb
from .common import BACKUPS, USAGE, CommandError, open_store, read_input, short_version

if TYPE_CHECKING:
    from cryptography import x509

    from adapters.stores import BundleStore
    from ca_core.bundle import PublicBundle


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``inspect`` and ``bundle`` with its verbs."""
    p = sub.add_parser(
        "inspect", allow_abbrev=False, help="show the trust anchors and issuer of a store, with time left"
    )
    add_options(p, STORE_OPTIONS)
    p.set_defaults(func=inspect_verb.cmd_inspect)

    bundle = sub.add_parser(
        "bundle", allow_abbrev=False, help="operate on the trust bundle in a store"
    ).add_subparsers(dest="bundle_command", required=True)
    gen_options = tuple(
        o
        for o in SERVE_OPTIONS
        if o.flag in ("trust-domain", "ca-key-algorithm", "root-key", "issuer-key", "root-ttl", "issuer-ttl")
    )
    p = bundle.add_parser("init", allow_abbrev=False, help="generate a root and issuer into an empty store")
    upstream = tuple(o for o in SERVE_OPTIONS if o.flag.startswith("upstream-"))  # design §5.16
    add_options(p, STORE_OPTIONS + gen_options + upstream)
    p.add_argument(
        "--force",
        action="store_true",
        help="generate even in a store that held a bundle before (its evidence is shown without "
        "--force): workloads holding the old trust anchors will not trust the new root",
    )
    p.set_defaults(func=cmd_bundle_init)
    p = bundle.add_parser(
        "import", allow_abbrev=False, help="bring your own CA: verify, then write it into the store"
    )
    add_options(p, STORE_OPTIONS)
    p.add_argument("--root", help="PEM trust anchors (one or more self-signed roots)")
    p.add_argument("--issuer-cert", help="PEM issuer certificate (chain), issuer first")
    # dest: not the --issuer-key option of serve and init (a kms:// reference, design §5.18)
    p.add_argument(
        "--issuer-key", dest="issuer_key_arg", help="PEM issuer private key (PKCS#8, SEC1 or PKCS#1)"
    )
    # dest: not the --root-key option of serve and init (a kms:// reference, design §5.18)
    p.add_argument(
        "--root-key", dest="root_key_file", help="PEM root private key (lets the CA rotate issuers itself)"
    )
    p.add_argument(
        "--from",
        dest="from_dir",
        help="a directory written by `bundle export` (every item: keys, root key, rotation state); "
        "instead of --root/--issuer-cert/--issuer-key/--root-key",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a current bundle that is damaged, or whose active root the import drops",
    )
    p.set_defaults(func=cmd_bundle_import)
    export_verbs.add_parsers(bundle)
    p = bundle.add_parser(
        "regenerate", allow_abbrev=False, help="replace the CA with a new root and issuer, keeping a backup"
    )
    add_options(p, STORE_OPTIONS + gen_options)
    p.add_argument(
        "--backup-to",
        help="an empty store URL that receives the old bundle "
        f"(default: file:// + a new {BACKUPS}/<UTC time>/, mode 0700)",
    )
    p.set_defaults(func=cmd_bundle_regenerate)


def _lifetime(cert: x509.Certificate) -> str:
    """``lifetime 7d 0h, until 2026-…`` of a certificate (NotAfter - NotBefore)."""
    return (
        f"lifetime {inspect_verb.days_hours(cert.not_valid_after_utc - cert.not_valid_before_utc)}, until "
        f"{cert.not_valid_after_utc.isoformat()}"
    )


def cmd_bundle_init(args: argparse.Namespace) -> int:
    """Generate a root and issuer into an empty store, whatever ``--bootstrap-policy`` says; into
    one that held a bundle before only with ``--force``. Raises CommandError (1) when it is not
    empty, BundleError (1) naming the evidence without ``--force``."""
    from handlers.composition import load_bundle, store_retry

    cfg, store = open_store(args)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is not None:
        raise CommandError(
            f"{store.description} already holds a trust bundle (version {short_version(current.version)}); "
            "nothing was changed (use `bundle regenerate --backup-to URL` to replace it)"
        )
    loaded = load_bundle(cfg, store, datetime.now(UTC), by_operator=True, force=args.force)
    verb = "created" if loaded.created else "another writer created"
    root = loaded.bundle.trust_anchors[0].subject.rfc4514_string()
    print(
        f"{store.description}: {verb} a trust bundle; root {root} "
        f"({_lifetime(loaded.bundle.trust_anchors[0])}), issuer ({_lifetime(loaded.bundle.issuer)})"
    )
    return 0


def cmd_bundle_import(args: argparse.Namespace) -> int:
    """Verify the given bundle (files or ``--from DIR``), then create or replace the store's.
    Without ``--force`` a current bundle that is damaged (design §5.3) or whose active root the
    import drops (trust continuity, §5.4) is kept. Says what running CAs do with the new bundle.
    Raises CommandError (1 refused, 2 usage), ConfigError, CAError (the given bundle does not
    verify)."""
    from ca_core.bundle import (
        ANCHORS,
        ISSUER_CHAIN,
        ISSUER_KEY,
        JWKS,
        JWT_KEY,
        ROOT_KEY,
        ROTATION_STATE,
        parse_bundle,
    )
    from ca_core.continuity import judge_replacement, kept_root_key, refusal_message
    from ca_core.rotation.codec import parse_state
    from handlers.composition import directory_store, store_retry

    _, store = open_store(args)
    if args.from_dir:
        if args.root or args.issuer_cert or args.issuer_key_arg or args.root_key_file:
            raise CommandError(
                "--from takes a whole exported bundle: give no --root/--issuer-*/--root-key", USAGE
            )
        source = directory_store(args.from_dir)
        exported = source.load()
        if exported is None:
            raise CommandError(
                f"--from {args.from_dir}: no trust bundle there (write one with `bundle export`)", USAGE
            )
        new = parse_bundle(exported.items, source.labels(), open_key=open_kms_key)
        parse_state(
            exported.items, new, source.labels(), open_key=open_kms_key
        )  # verified before anything is written
        items = new.to_items()
        if ROTATION_STATE in exported.items:
            items[ROTATION_STATE] = exported.items[ROTATION_STATE]
        if ROOT_KEY in exported.items:
            items[ROOT_KEY] = exported.items[ROOT_KEY]
    else:
        missing = [f for f, v in (("--root", args.root), ("--issuer-cert", args.issuer_cert)) if not v]
        missing += ["--issuer-key"] if not args.issuer_key_arg else []
        if missing:
            raise CommandError(f"bundle import needs {', '.join(missing)} (or --from DIR)", USAGE)
        items = {
            ANCHORS: read_input(args.root, "--root"),
            ISSUER_CHAIN: read_input(args.issuer_cert, "--issuer-cert"),
            ISSUER_KEY: read_input(args.issuer_key_arg, "--issuer-key"),
        }
        if args.root_key_file:
            items[ROOT_KEY] = read_input(args.root_key_file, "--root-key")
        labels = {ANCHORS: f"--root {args.root}", ISSUER_CHAIN: f"--issuer-cert {args.issuer_cert}"}
        labels |= {
            ISSUER_KEY: f"--issuer-key {args.issuer_key_arg}",
            ROOT_KEY: f"--root-key {args.root_key_file}",
        }
        new = parse_bundle(items, labels, open_key=open_kms_key)  # verified before anything is written
        items = new.to_items()  # normalised: keys as PKCS#8, the root never in issuer.crt
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        if not store.create(items):
            raise CommandError(f"{store.description} was written concurrently; nothing imported")
        print(f"{store.description}: imported the trust bundle")
        return 0
    old, damage = _current_bundle(current.items, store.labels())
    if old is None or damage is not None:
        if not args.force:
            what = "cannot be read" if old is None else "is damaged"
            raise CommandError(
                f"the current bundle in {store.description} {what} ({damage}); nothing was changed. "
                "A damaged bundle is replaced only with --force (or by `bundle regenerate`); to keep "
                "a copy of it first: `sentryca bundle export`"
            )
    now = datetime.now(UTC)
    # The store's newest bundle never accepted (written around the CAs, refused): the CAs serve
    # the last accepted one, and the import is judged against that (design §5.4).
    basis = _unaccepted_basis(store, current.items)
    if basis is not None:
        old, old_items = basis
    else:
        old_items = current.items
    if damage is None and old is not None and JWT_KEY not in items and JWT_KEY in current.items:
        # An import without JWT items keeps the current JWT key (as the root key of an anchor that
        # stays): replacing the X.509 part does not revoke every JWT-SVID issued.
        items[JWT_KEY], items[JWKS] = current.items[JWT_KEY], current.items[JWKS]
        print(f"{store.description}: the current JWT key (jwt.key, jwks.json) is kept", file=sys.stderr)
    if old is not None:
        verdict = judge_replacement(old, old_items, new, items, now, force=args.force)
        if not verdict.allowed and verdict.dropped_root is None:
            raise CommandError(f"{refusal_message(verdict, 'the imported bundle')}. Nothing was changed.")
        if not verdict.allowed and verdict.dropped_root is not None:
            if args.from_dir:
                given, remedy = (
                    f"the trust anchors in --from {args.from_dir}",
                    "Import an export of this CA whose anchors include that root (e.g. a newer "
                    "`bundle export`), rotate with `sentryca rotate root`, or use --force.",
                )
            else:
                given, remedy = (
                    "the imported trust anchors",
                    "Add the current root to --root, rotate, or use --force.",
                )
            raise CommandError(
                f"{given} do not include the current active root "
                f"{verdict.dropped_root.subject.rfc4514_string()}: every workload holding a current "
                f"certificate would stop being trusted. Nothing was changed. {remedy}"
            )
        # Keep the root key of an anchor that stays, so issuer rotation remains possible.
        kept = kept_root_key(current.items, new) if ROOT_KEY not in items else None
        if kept is not None:
            items[ROOT_KEY] = kept
    token = store.replace_version(items, current.version)
    if token is None:
        raise CommandError(f"{store.description} changed while importing; nothing imported, try again")
    record_override(store, items, token)
    print(
        f"{store.description}: imported the trust bundle (replacing version {short_version(current.version)})"
    )
    print(running_cas_notice(old, old_items, new, items, now), file=sys.stderr)
    return 0


def _unaccepted_basis(
    store: BundleStore, current_items: Mapping[str, bytes]
) -> tuple[PublicBundle, Mapping[str, bytes]] | None:
    """The store's record of the last accepted bundle (parsed, and its items) when the store's
    current bundle is not that one; None otherwise, or when there is no usable record."""
    from ca_core.bundle import parse_public_bundle
    from ca_core.continuity import matches_record

    try:
        record = store.load_accepted()
        if record is None or matches_record(record.items, current_items):
            return None
        return parse_public_bundle(record.items), record.items
    except CAError:
        return None


def record_override(store: BundleStore, items: Mapping[str, bytes], version: str) -> None:
    """The bundle an operator verb just wrote (``items``, version token ``version``) must be the
    store's record of the last accepted bundle (``load_accepted``, written with the bundle by the
    store itself): the override that the continuity rule of a starting CA and of the
    config-change function honours, so a deliberate replacement is neither refused at start nor
    reverted (design §5.4). Checked, repaired once (``publish_public``), else CommandError (1)
    saying what follows; the bundle stays written."""
    from adapters.stores import StoredBundle
    from ca_core.continuity import matches_record

    def recorded() -> bool:
        record = store.load_accepted()
        return record is not None and matches_record(record.items, items)

    try:
        if recorded():
            return
        store.publish_public(StoredBundle(items, version))
        if recorded():
            return
        problem = "it does not read back"
    except CAError as e:
        problem = str(e)
    raise CommandError(
        f"{store.description}: the new bundle is written, but it could not be recorded as the accepted "
        f"one ({problem}). Until it is, a CA that starts and the config-change function judge it "
        "against the previous bundle, and may refuse it or put the previous one back. Make the "
        "public part writable, then repeat the import from an export of the new bundle "
        "(`sentryca bundle export`, then `sentryca bundle import --force --from DIR`); see "
        'docs/runbook.md, "A refused bundle in the store"'
    )


def _current_bundle(
    items: Mapping[str, bytes], labels: Mapping[str, str]
) -> tuple[PublicBundle | None, str | None]:
    """(the public part of a store's current bundle, or None when it cannot be read; what is
    damaged in the whole bundle, or None when it loads: keys, root key and rotation state)."""
    from ca_core.bundle import parse_bundle, parse_public_bundle
    from ca_core.rotation.codec import parse_state

    try:
        public = parse_public_bundle(items, labels)
    except CAError as e:
        return None, str(e)
    try:
        parse_state(items, parse_bundle(items, labels, open_key=open_kms_key), labels)
    except CAError as e:
        return public, str(e)
    return public, None


def running_cas_notice(
    old: PublicBundle | None,
    old_items: Mapping[str, bytes],
    new: PublicBundle,
    new_items: Mapping[str, bytes],
    now: datetime,
    *,
    rotation_path: bool = False,
) -> str:
    """What running CAs do with the bundle ``new`` that replaced ``old`` (None: unreadable), and
    how to put it in force (design §5.4, §8.4; docs/runbook.md "Replace the CA").
    ``rotation_path``: the replaced bundle loaded, so ``rotate root --emergency`` was an option."""
    from ca_core.continuity import judge_replacement

    restart = (
        "To put it in force, restart every CA process (stop it and start it again: a fresh start "
        "loads the store as it is; e.g. `kubectl rollout restart deployment/NAME`, `aws ecs "
        "update-service --cluster C --service S --force-new-deployment`, or Ctrl-C and `sentryca "
        "serve` again); until the last one has restarted, CAs serve different roots. Then hand "
        "out the new trust anchors (`sentryca bundle show --out DIR`): certificates issued under "
        'the old root no longer verify. See docs/runbook.md, "Replace the CA".'
    )
    if old is None:
        return (
            "Running CAs: the replaced bundle could not be read, so which root they serve is not "
            "known here. A CA whose root is among the new trust anchors takes this bundle at its "
            "next store poll (--store-poll-interval) or restart; any other refuses it (trust "
            "continuity: it drops the root that CA serves), logs the refusal, counts it in "
            "sentryca_bundle_change_refused_total and goes on serving its old bundle. " + restart
        )
    verdict = judge_replacement(old, old_items, new, new_items, now)
    if verdict.allowed:
        return (
            "Running CAs take this bundle at their next store poll (--store-poll-interval), or "
            "when restarted: it keeps the root they serve."
        )
    if verdict.dropped_root is None:
        return (
            "Running CAs do NOT take this bundle by themselves: it drops the JWT key(s) "
            f"{', '.join(verdict.dropped_jwt_keys)} they sign with, so they refuse it (trust "
            "continuity) and go on serving the old bundle. " + restart
        )
    dropped = verdict.dropped_root.subject.rfc4514_string() if verdict.dropped_root else "?"
    hint = (
        " (For a bundle that still loads, `sentryca rotate root --emergency` replaces the root in "
        "a way running CAs take at their next poll.)"
        if rotation_path
        else ""
    )
    return (
        f"Running CAs do NOT take this bundle by themselves: it drops the root they serve "
        f"({dropped}), so a CA polling its store (--store-poll-interval) refuses it (trust "
        "continuity), logs the refusal, counts it in sentryca_bundle_change_refused_total and goes "
        "on serving the old bundle, as does a CA that does not poll. " + restart + hint
    )


def cmd_bundle_regenerate(args: argparse.Namespace) -> int:
    """Copy the store's bundle to the empty store ``--backup-to`` (default: a new directory under
    ``.sentry/backups/``), check it reads back, then replace it with a new root and issuer of the
    bundle's trust domain, issuer ID and key algorithm (design §5.15). Raises CommandError (1)
    and changes nothing on refusal; ConfigError when a setting given contradicts the bundle."""
    from ca_core.bundle import generate_bundle
    from ca_core.bundle_settings import Change, settings_of_items
    from handlers.composition import build_store, store_retry

    from .common import new_backup_directory, settle_with_bundle

    cfg, store = open_store(args)
    backup = build_store(cfg, args.backup_to) if args.backup_to else None
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        raise CommandError(f"{store.description} is empty; use `bundle init`")
    old, damage = _current_bundle(current.items, store.labels())
    settings = settings_of_items(current.items, store.labels())
    cfg, settled = settle_with_bundle(
        args, cfg, settings, Change.NEW_ROOT, "bundle regenerate", store.description
    )
    now = datetime.now(UTC)
    root_key = (
        open_kms_key(cfg.root_key, require_enabled=True) if cfg.root_key else None
    )  # checked before any write
    from handlers.composition import open_issuer_key

    issuer_key = open_issuer_key(cfg)
    if backup is None:
        backup = build_store(cfg, f"file://{new_backup_directory(now)}")
    if not backup.create(current.items):
        raise CommandError(f"the backup store {backup.description} is not empty; nothing was changed")
    saved = backup.load()
    if saved is None or dict(saved.items) != dict(current.items):
        raise CommandError(f"the backup in {backup.description} does not read back; nothing was changed")
    bundle = generate_bundle(
        settled.trust_domain,
        settled.ca_identity,
        now,
        algorithm=settled.algorithm,
        root_lifetime=settled.lifetimes.root,
        issuer_lifetime=settled.lifetimes.issuer,
        root_key=root_key,
        issuer_key=issuer_key,
    )
    items = bundle.to_items()
    token = store.replace_version(items, current.version)
    if token is None:
        raise CommandError(f"{store.description} changed meanwhile; nothing replaced (backup kept)")
    record_override(store, items, token)
    print(
        f"{store.description}: regenerated the trust bundle (new root "
        f"{bundle.trust_anchors[0].subject.rfc4514_string()}; {settled.summary})"
    )
    print(
        f"the old bundle, private keys included, is in {backup.description}: keep it private "
        "(encrypted, access-controlled, never in version control)"
    )
    notice = running_cas_notice(old, current.items, bundle, items, now, rotation_path=damage is None)
    print(notice, file=sys.stderr)
    return 0
