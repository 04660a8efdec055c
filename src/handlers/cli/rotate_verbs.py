"""``sentryca rotate issuer|root|advance|jwt-key``: rotation steps on the trust bundle in a
store (design §5.7–5.13, §5.17). The core decides each step; these verbs read the store, write
the outcome over the version read (compare-and-swap), audit and print each step. What they generate keeps the
bundle's trust domain, issuer ID and key algorithm (design §5.15)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adapters.kms import open_key as open_kms_key
from ca_core.config import SERVE_OPTIONS, STORE_OPTIONS, add_options

from .common import USAGE, CommandError, open_store, read_input, settle_with_bundle

if TYPE_CHECKING:
    from adapters.stores import BundleStore, StoredBundle
    from ca_core.bundle import TrustBundle
    from ca_core.bundle_settings import Change
    from ca_core.config import Config
    from ca_core.keys import PrivateKey
    from ca_core.rotation.issuer_rule import UpstreamIssuer
    from ca_core.rotation.state import Rotation, RotationPolicy, RotationState

# The serve options the rotate verbs take: names, algorithm and lifetimes of what they generate,
# the propagation window, the automatic policy, and what bounds a retired issuer's leaves.
ROTATION_FLAGS = (
    "trust-domain",
    "ca-key-algorithm",
    "config",
    "workload-cert-ttl",
    "allowed-clock-skew",
    "store-poll-interval",
    "expiry-check-interval",
    "auto-rotate",
    "root-propagation-window",
    "root-ttl",
    "issuer-ttl",
    "upstream-authority",
    "upstream-timeout",
    "upstream-max-attempts",
    "jwt-ttl",
    "jwt-key-ttl",
    "jwt-key-id",
    "log-level",
    "log-as-json",
)
# What a running CA needs to see what the CLI wrote (it reads the store only then).
PICKED_UP = "with --store-poll-interval, or after a restart"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rotate`` with its verbs."""
    rotate = sub.add_parser(
        "rotate",
        allow_abbrev=False,
        help="rotate the issuer, the root or the JWT key of the trust bundle in a store",
    ).add_subparsers(dest="rotate_command", required=True)
    rotation_options = STORE_OPTIONS + tuple(o for o in SERVE_OPTIONS if o.flag in ROTATION_FLAGS)
    p = rotate.add_parser(
        "issuer",
        allow_abbrev=False,
        help="a new issuer under the active root, active at once (leaves issued before still verify)",
    )
    add_options(p, rotation_options)
    p.add_argument(
        "--issuer-cert", help="PEM issuer certificate (chain) signed by the active root, issuer first"
    )
    p.add_argument(  # dest: not the --issuer-key option of serve and init, which takes kms:// only
        "--issuer-key",
        dest="issuer_key_arg",
        help="PEM key of --issuer-cert (needed when the store has no root.key); or, alone, the key the "
        "root certifies: kms://<key id, ARN or alias> (an issuer key in KMS: every leaf signed by KMS) "
        "or local (a fresh local key, e.g. to move back from KMS) (default: the current issuer key when "
        "it is in KMS, else a fresh local key)",
    )
    p.set_defaults(func=cmd_rotate_issuer)
    p = rotate.add_parser(
        "root",
        allow_abbrev=False,
        help="prepare a new root: a trust anchor now, its issuer active after --root-propagation-window",
    )
    add_options(p, rotation_options + tuple(o for o in SERVE_OPTIONS if o.flag == "root-key"))
    p.add_argument(
        "--emergency",
        action="store_true",
        help="after a key compromise: the new root and issuer active at once, every other root removed "
        "(every certificate issued before stops verifying)",
    )
    p.set_defaults(func=cmd_rotate_root)
    p = rotate.add_parser(
        "advance",
        allow_abbrev=False,
        help="take the rotation steps due now (what the running CA does at each expiry check)",
    )
    add_options(p, rotation_options)
    p.set_defaults(func=cmd_rotate_advance)
    p = rotate.add_parser(
        "jwt-key",
        allow_abbrev=False,
        help="publish a new JWT key in jwks.json; it signs once verifiers' cached JWK Sets hold it",
    )
    add_options(p, rotation_options)
    p.add_argument(
        "--now",
        action="store_true",
        help="the new key signs at once (breaks caches: verifiers holding a JWK Set fetched before "
        "refuse its tokens for up to an hour); the old key stays published as usual",
    )
    p.set_defaults(func=cmd_rotate_jwt_key)


def _rotation_context(
    args: argparse.Namespace,
) -> tuple[Config, BundleStore, StoredBundle, TrustBundle, RotationState]:
    """(config, store, stored, bundle, rotation state) of the store named by ``args``; logging
    set up so the audit records (``sentryca.audit``) of the steps go to stderr. Raises
    CommandError (1) for an empty store, CAError for an unusable bundle."""
    from ca_core.bundle import parse_bundle
    from ca_core.rotation.codec import parse_state
    from handlers.composition import store_retry
    from handlers.logs import setup_logging

    cfg, store = open_store(args)
    setup_logging(cfg.log_level, cfg.log_as_json)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        raise CommandError(f"{store.description} holds no trust bundle; nothing to rotate")
    bundle = parse_bundle(current.items, store.labels(), open_key=open_kms_key)
    state = parse_state(current.items, bundle, store.labels(), open_key=open_kms_key)
    return cfg, store, current, bundle, state


def _policy(
    args: argparse.Namespace,
    cfg: Config,
    store: BundleStore,
    bundle: TrustBundle,
    state: RotationState,
    change: Change,
    verb: str,
    *,
    generates: bool = True,
) -> RotationPolicy:
    """The rotation policy of ``cfg`` with the trust domain, issuer ID and key algorithm of the
    bundle (design §5.15), printing them when ``generates``. Raises ConfigError when a setting
    given explicitly contradicts the bundle."""
    from ca_core.bundle_settings import settings_of
    from ca_core.policy import lifetime_warnings, rotation_policy

    prepared = state.prepared_root.root if state.prepared_root is not None else None
    bundle_settings = settings_of(bundle, prepared)
    cfg, settled = settle_with_bundle(
        args, cfg, bundle_settings, change, verb, store.description, algorithm=generates
    )
    if generates:
        print(f"generating with {settled.summary}")
        for warning in lifetime_warnings(cfg, bundle_settings):
            print(f"warning: {warning}", file=sys.stderr)
    return replace(
        rotation_policy(cfg),
        ca_identity=settled.ca_identity,
        root_lifetime=settled.lifetimes.root,
        issuer_lifetime=settled.lifetimes.issuer,
    )


def _write_rotation(store: BundleStore, current: StoredBundle, result: Rotation) -> None:
    """Write ``result`` only over the version read (CAS); audit and print each step. Raises
    CommandError (1) when the store changed meanwhile."""
    from adapters.stores import StoredBundle
    from handlers.logs import audit_rotation

    items = result.items()
    token = store.replace_version(items, current.version)
    if token is None:
        raise CommandError(
            f"{store.description} changed while rotating (another replica or operator); nothing "
            "was written, run the command again"
        )
    # A rotation step keeps trust continuity by construction: the store's record of the last
    # accepted bundle follows it (design §5.4, §5.5).
    store.publish_public(StoredBundle(items, token))
    for step in result.steps:
        audit_rotation(step, store.description)
        print(step.message)


def cmd_rotate_issuer(args: argparse.Namespace) -> int:
    """A new issuer under the active root: generated, or ``--issuer-cert``/``--issuer-key``, or
    with ``--upstream-authority`` and no root key held, signed by the upstream."""
    from ca_core.bundle import parse_certificates
    from ca_core.bundle_settings import Change
    from ca_core.config.values import parse_kms_ref
    from ca_core.keys import load_private_key
    from ca_core.rotation.actions import rotate_issuer
    from ca_core.rotation.state import held_root_key, kept_issuer_key

    cfg, store, current, bundle, state = _rotation_context(args)
    supplied, new_key, fresh_key = None, None, False
    alone = args.issuer_key_arg if args.issuer_key_arg and not args.issuer_cert else ""
    if alone == "local" or alone.startswith("kms://"):  # the key the root certifies
        fresh_key = args.issuer_key_arg == "local"
        if not fresh_key:
            try:
                ref = parse_kms_ref(args.issuer_key_arg)
            except ValueError as e:
                raise CommandError(f"--issuer-key: {e}", USAGE) from None
            new_key = open_kms_key(ref, require_enabled=True)  # checked before anything is written
            print(f"the new issuer's key is {new_key.key_uri} ({new_key.key_spec}): KMS signs every leaf")
    elif args.issuer_cert or args.issuer_key_arg:
        if not (args.issuer_cert and args.issuer_key_arg):
            raise CommandError("--issuer-cert and --issuer-key go together", USAGE)
        chain = parse_certificates(
            read_input(args.issuer_cert, "--issuer-cert"), f"--issuer-cert {args.issuer_cert}"
        )
        while len(chain) > 1 and chain[-1] in bundle.trust_anchors:
            chain = chain[:-1]  # the root appended to the chain file
        try:
            key = load_private_key(read_input(args.issuer_key_arg, "--issuer-key"))
        except ValueError as e:
            raise CommandError(f"--issuer-key {args.issuer_key_arg}: {e}", USAGE) from None
        supplied = (chain, key)
    generates = supplied is None
    policy = _policy(args, cfg, store, bundle, state, Change.ISSUER, "rotate issuer", generates=generates)
    if supplied is None and cfg.upstream_authority is not None and held_root_key(bundle) is None:
        certified = new_key if new_key is not None or fresh_key else kept_issuer_key(bundle.issuer_key)
        supplied = _from_upstream(cfg, cfg.upstream_authority, bundle, policy, certified)  # design §5.16
    result = rotate_issuer(
        bundle, state, datetime.now(UTC), policy, supplied, issuer_key=new_key, fresh_key=fresh_key
    )
    _write_rotation(store, current, result)
    print(
        f"A running CA signs with the new issuer once it loads this bundle ({PICKED_UP}); until "
        "then it keeps signing with the old one."
    )
    return 0


def _from_upstream(
    cfg: Config, upstream: str, bundle: TrustBundle, policy: RotationPolicy, key: PrivateKey | None = None
) -> UpstreamIssuer:
    """An issuer signed by ``--upstream-authority`` under the bundle's active root, checked, each
    call bounded by ``--upstream-timeout``/``--upstream-max-attempts``. key: the issuer key to
    certify (a KMS key), else a fresh local one."""
    from adapters.acm_pca import bounded_authority
    from ca_core.rotation.state import active_root
    from ca_core.upstream import accept_issued, issuer_request

    now = datetime.now(UTC)
    request = issuer_request(
        policy.ca_identity,
        policy.algorithm,
        now,
        lifetime=policy.issuer_lifetime,
        backdate=policy.clock_skew,
        key=key,
    )
    root = active_root(bundle)
    authority = bounded_authority(upstream, cfg.upstream_timeout.total_seconds(), cfg.upstream_max_attempts)
    certificate, chain = authority.issue_issuer(request, expect_root=root)
    issuer_chain, _ = accept_issued(request, certificate, chain, now)
    print(f"{upstream} signed issuer serial {certificate.serial_number:x}")
    return issuer_chain, request.key


def cmd_rotate_root(args: argparse.Namespace) -> int:
    """Prepare a new root, or with ``--emergency`` replace every root at once."""
    from ca_core.bundle_settings import Change
    from ca_core.rotation.actions import emergency_root, prepare_root

    cfg, store, current, bundle, state = _rotation_context(args)
    policy = _policy(args, cfg, store, bundle, state, Change.NEW_ROOT, "rotate root")
    now = datetime.now(UTC)
    root_key = (
        open_kms_key(cfg.root_key, require_enabled=True) if cfg.root_key else None
    )  # --root-key kms://...
    if root_key is not None and root_key.key_uri == bundle.root_key_uri:
        raise CommandError(
            f"--root-key {cfg.root_key} is the active root's KMS key: a new root needs a new key "
            "(create one: aws kms create-key --key-usage SIGN_VERIFY --key-spec ECC_NIST_P256). "
            "Nothing was changed",
            USAGE,
        )
    if root_key is not None:
        print(f"the new root's key is {root_key.key_uri} ({root_key.key_spec}): KMS signs it")
    if args.emergency:
        result = emergency_root(bundle, state, now, policy, root_key)
    else:
        result = prepare_root(bundle, state, now, policy, root_key)
    _write_rotation(store, current, result)
    if args.emergency:
        print(
            "Every workload must now fetch the new trust anchors (ca.crt) and a new certificate; "
            "certificates issued before no longer verify. Running CAs serve the new root once they load "
            f"this bundle ({PICKED_UP}).",
            file=sys.stderr,
        )
    else:
        print(
            f"The running CA takes the next steps itself ({PICKED_UP}); "
            "without one, run `sentryca rotate advance` after the propagation window."
        )
    return 0


def cmd_rotate_advance(args: argparse.Namespace) -> int:
    """Take the rotation steps due now; says when the next one is due when none is."""
    from ca_core.bundle_settings import Change
    from ca_core.rotation.rules import advance, next_step_due

    cfg, store, current, bundle, state = _rotation_context(args)
    policy = _policy(args, cfg, store, bundle, state, Change.STEPS, "rotate advance", generates=False)
    result = advance(bundle, state, datetime.now(UTC), policy)
    if result is None:
        upcoming = next_step_due(bundle, state, policy)
        if upcoming is not None:
            when = f"; the next one, {upcoming[1]}, is due at {upcoming[0].isoformat()}"
        else:
            when = "; none is scheduled (no rotation in progress" + (
                ")" if cfg.auto_rotate else ", and --auto-rotate is off)"
            )
        print(f"{store.description}: no rotation step is due{when}")
        return 0
    _write_rotation(store, current, result)
    return 0


def cmd_rotate_jwt_key(args: argparse.Namespace) -> int:
    """Publish a new JWT key (design §5.17); with ``--now`` it also signs at once."""
    from ca_core.bundle_settings import Change
    from ca_core.rotation.jwt_keys import rotate_jwt_key

    cfg, store, current, bundle, state = _rotation_context(args)
    policy = _policy(args, cfg, store, bundle, state, Change.STEPS, "rotate jwt-key", generates=False)
    result = rotate_jwt_key(bundle, state, datetime.now(UTC), policy, at_once=args.now)
    _write_rotation(store, current, result)
    if args.now:
        print(
            "Running CAs sign with the new key once they load this bundle "
            f"({PICKED_UP}); verifiers that cached the JWK Set before refuse its tokens until they "
            "fetch it again (the OIDC server's max-age: 1h).",
            file=sys.stderr,
        )
    else:
        print(
            f"The running CA makes the new key sign itself once the publish period has passed ({PICKED_UP}); "
            "without one, run `sentryca rotate advance` then."
        )
    return 0
