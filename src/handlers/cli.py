"""``sentryca``: run the CA and talk to it.

    sentryca serve    [options of SPEC §7]          run the CA (what `make run` runs)
    sentryca request  --id APP --namespace NS ...   make a key and CSR, get them signed
    sentryca sign     --csr FILE --id APP ...       get a CSR made elsewhere signed
    sentryca inspect  [store options]               show trust anchors, issuer, expiry
    sentryca bundle init|import|export|regenerate   operate on the trust bundle in a store
    sentryca rotate issuer|root|advance             rotate the issuer or the root (SPEC §5)

Exit codes: 0 success; 1 the CA refused or could not be reached; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from ca_core.config import SERVE_OPTIONS, STORE_OPTIONS, add_options, load_config
from ca_core.errors import CAError, ConfigError
from ca_core.expiry import check_expiry
from ca_core.keys import KeyAlgorithm
from ca_core.validators import TokenValidatorKind

log = logging.getLogger("sentryca")
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
    "log-level",
    "log-as-json",
)
# compared with --listen-address, never bound
_ANY_V4 = "0.0.0.0"  # noqa: S104  # nosec B104
_LOCAL_OR_ANY = ("127.0.0.1", _ANY_V4, "::", "::1")


def _read_text(path: str) -> str:
    return Path(path).read_text()


def _config(args: argparse.Namespace):
    return load_config(args, os.environ, _read_text)


def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .workers import Supervisor, worker_count

    cfg = _config(args)
    setup_logging(cfg.log_level, cfg.log_as_json)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    if worker_count(cfg) > 1:  # the supervisor never imports gRPC: only its workers serve
        return _serve_workers(cfg, Supervisor(cfg), stop)
    from .server import CertificateAuthority

    ca = CertificateAuthority()
    try:
        ca.start(cfg)
    except CAError as e:
        log.critical("cannot start the CA: %s", e)
        return 1
    host = "localhost" if cfg.listen_address in _LOCAL_OR_ANY else cfg.listen_address
    if cfg.log_as_json:
        pass  # JSON lines only: the start-up log line says where the CA serves
    elif ca.grpc_port is None:
        print(
            f"\nThe CA is NOT serving gRPC: {ca.server_certificate_error}.\n"
            f"  Health:        http://{host}:{ca.healthz_port}/healthz (503, says what is not ready)\n"
            "Repair or import the trust bundle, then restart the CA. Stop with Ctrl-C.\n",
            file=sys.stderr,
            flush=True,
        )
    else:
        _print_banner(cfg, ca, host)
    stop.wait()
    log.info("signal received: stopping")
    ca.stop()
    return 0


def _serve_workers(cfg, supervisor, stop: threading.Event) -> int:
    """``serve --workers N``: start the supervisor's workers, supervise until a signal."""
    try:
        supervisor.start()
    except CAError as e:
        log.critical("cannot start the CA: %s", e)
        return 1
    if not cfg.log_as_json:
        host = "localhost" if cfg.listen_address in _LOCAL_OR_ANY else cfg.listen_address
        _print_banner(cfg, supervisor, host)
        print(f"  ({supervisor.count} worker processes share the gRPC port)\n", file=sys.stderr, flush=True)
    supervisor.run(stop)
    log.info("signal received: stopping the workers")
    supervisor.stop()
    return 0


def _print_banner(cfg, ca, host: str) -> None:
    if cfg.store_url.startswith("file://"):
        anchors = str(Path(cfg.store_url[len("file://") :]) / cfg.issuer_ca_filename)
        export = ""
    else:
        anchors = "./trust/ca.crt"
        kube = (
            f" --kubeconfig '{cfg.kubeconfig}'"
            if cfg.kubeconfig and cfg.store_url.startswith("kubernetes:")
            else ""
        )
        export = (
            f"  .venv/bin/sentryca bundle export --trust-bundle-store '{cfg.store_url}'{kube} --out ./trust\n"
        )
    print(
        f"\nThe CA is serving on {cfg.listen_address}:{ca.grpc_port} (gRPC over TLS).\n"
        f"  Trust bundle:  {cfg.store_url}\n"
        f"  Health:        http://{host}:{ca.healthz_port}/healthz\n"
        f"Get a workload certificate (in another terminal):\n{export}"
        f"  .venv/bin/sentryca request --id myapp --namespace default "
        f"--server {host}:{ca.grpc_port} --trust-anchors {anchors} --out ./certs\n"
        f"Stop with Ctrl-C.\n",
        file=sys.stderr,
        flush=True,
    )


def _client_args(p: argparse.ArgumentParser, with_csr: bool) -> None:
    if with_csr:
        p.add_argument("--csr", required=True, help="PEM CSR file (made e.g. with openssl req)")
    p.add_argument("--id", required=True, help="app id")
    p.add_argument("--namespace", required=True, help="namespace")
    p.add_argument(
        "--trust-domain", default="", help="trust domain to ask for (INSECURE/JWKS; default public)"
    )
    p.add_argument(
        "--token", default=os.environ.get("SENTRY_TOKEN", ""), help="identity token (or SENTRY_TOKEN)"
    )
    p.add_argument(
        "--token-validator", default="0", help="insecure, kubernetes, jwks or a number (default: the CA's)"
    )
    p.add_argument(
        "--server", default="localhost:50001", help="CA address HOST:PORT (default localhost:50001)"
    )
    p.add_argument("--server-name", default=None, help="TLS name to expect from the CA, if not HOST")
    p.add_argument("--trust-anchors", required=True, help="PEM file of the CA's trust anchors (ca.crt)")
    p.add_argument(
        "--out",
        required=True,
        help="directory for tls.crt (chain) and ca.crt" + ("" if with_csr else " and tls.key"),
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with a fresh file of ``mode`` (never an existing file's mode,
    never through a symlink left at a temporary name)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _existing_key_conflict(out: Path, csr_key: object) -> str | None:
    """Why OUT/tls.key must not be left beside the new certificate, or None."""
    from cryptography.hazmat.primitives import serialization

    key_file = out / "tls.key"
    if not key_file.exists():
        return None
    try:
        existing = serialization.load_pem_private_key(key_file.read_bytes(), password=None).public_key()
    except (OSError, ValueError, TypeError):
        return f"{key_file} exists and is not a readable private key"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if existing.public_bytes(*spki) != csr_key.public_bytes(*spki):  # type: ignore[attr-defined]
        return (
            f"{key_file} holds another key than the CSR's: the new certificate would not match it. "
            "Choose another --out, or remove that file"
        )
    return None


def _sign_and_write(args: argparse.Namespace, csr_pem: bytes, key_pem: bytes | None) -> int:
    import grpc
    from cryptography import x509

    import sentryca_client as client
    from ca_core.csr import csr_public_key
    from ca_core.errors import InvalidRequest

    try:
        validator = TokenValidatorKind.parse(args.token_validator)
    except ValueError as e:
        return _fail(f"--token-validator: {e}", 2)
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):[0-9]{1,5}", args.server):
        return _fail(f"--server {args.server}: expected HOST:PORT, e.g. localhost:50001 or [::1]:50001", 2)
    try:
        anchors = Path(args.trust_anchors).read_bytes()
        x509.load_pem_x509_certificates(anchors)
    except OSError as e:
        return _fail(f"--trust-anchors {args.trust_anchors}: {e.strerror}", 2)
    except ValueError:
        return _fail(f"--trust-anchors {args.trust_anchors}: not a PEM file of certificates", 2)
    try:
        csr_key = csr_public_key(csr_pem)
    except InvalidRequest as e:
        return _fail(f"--csr: {e}", 2)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _fail(f"--out {out}: {e.strerror or e}", 2)
    if key_pem is None and (conflict := _existing_key_conflict(out, csr_key)):
        return _fail(conflict, 2)
    try:
        with client.channel(args.server, anchors, args.server_name) as chan:
            response = client.sign(
                chan,
                csr_pem,
                args.id,
                args.namespace,
                trust_domain=args.trust_domain,
                token=args.token,
                token_validator=int(validator),
                timeout=args.timeout,
            )
        signed = client.verify_response(
            response,
            anchors,
            namespace=args.namespace,
            app_id=args.id,
            trust_domain=args.trust_domain or None,
            public_key=csr_key,
        )
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return _fail(
                f"cannot reach the CA at {args.server}, or its TLS certificate does not verify against "
                f"--trust-anchors {args.trust_anchors} ({e.code().name}: {e.details()})",
                1,
            )
        return _fail(f"the CA refused: {e.code().name}: {e.details()}", 1)
    except client.VerifyError as e:
        return _fail(f"{e}; nothing was written", 1)
    try:
        if key_pem is not None:
            _write(out / "tls.key", key_pem, 0o600)
        _write(out / "tls.crt", signed.chain_pem, 0o644)
        _write(out / "ca.crt", signed.anchors_pem, 0o644)
    except OSError as e:
        return _fail(f"--out {out}: cannot write ({e.strerror or e})", 2)
    print(
        f"{signed.spiffe_id}\nvalid until {signed.valid_until.isoformat()}\nwritten to {out}/"
        f"{{tls.crt,ca.crt{',tls.key' if key_pem else ''}}}"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        csr_pem = Path(args.csr).read_bytes()
    except OSError as e:
        print(f"error: --csr {args.csr}: {e.strerror}", file=sys.stderr)
        return 2
    return _sign_and_write(args, csr_pem, None)


def cmd_request(args: argparse.Namespace) -> int:
    from cryptography import x509

    from ca_core.keys import private_key_pem, signature_hash

    try:
        algorithm = KeyAlgorithm.parse(args.key_algorithm)
    except ValueError as e:
        print(f"error: --key-algorithm: {e}", file=sys.stderr)
        return 2
    key = algorithm.generate()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, signature_hash(key))
    from cryptography.hazmat.primitives.serialization import Encoding

    return _sign_and_write(args, csr.public_bytes(Encoding.PEM), private_key_pem(key))


def cmd_inspect(args: argparse.Namespace) -> int:
    """Exit 0 when the whole bundle is usable, 1 when it is empty or unusable; the public part
    (anchors, issuer) is shown whenever it can be read, with the time each has left."""
    from ca_core.bundle import parse_bundle, parse_public_bundle
    from ca_core.errors import BundleError, Unavailable

    from .composition import build_store

    cfg = _config(args)
    store = build_store(cfg)
    stored = store.load_public()
    if stored is None:
        print(f"{store.description}: empty (no trust bundle yet; `sentryca serve` creates one)")
        return 1
    public = parse_public_bundle(stored.items, store.labels())
    now = datetime.now(UTC)
    print(f"store: {store.description} (version {stored.version[:12]})")
    for f in check_expiry(public.anchors_pem, public.issuer_chain_pem, now):
        state = {logging.ERROR: "EXPIRED/INVALID", logging.WARNING: "EXPIRING", logging.DEBUG: "ok"}[f.level]
        not_after = f.not_after.isoformat() if f.not_after else "?"
        print(f"{f.role:6} {state:15} {_time_left(f.remaining):>20}  NotAfter {not_after}  {f.subject}")
    try:
        whole = store.load()
        if whole is None:
            raise BundleError("the keys are missing")
        parse_bundle(whole.items, store.labels())
    except Unavailable as e:
        print(f"bundle: the keys cannot be read here ({e}); only the public part was checked")
        return 0
    except BundleError as e:
        print(f"bundle: UNUSABLE: {e}")
        return 1
    from ca_core.rotation.codec import describe, parse_state

    bundle = parse_bundle(whole.items, store.labels())
    try:
        state = parse_state(whole.items, bundle, store.labels())
    except BundleError as e:
        print(f"bundle: UNUSABLE: {e}")
        return 1
    for line in describe(state, bundle):
        print(f"rotation: {line}")
    print("bundle: complete (anchors, issuer chain and key match)")
    return 0


def _time_left(left) -> str:
    if left is None:
        return "?"
    seconds = int(left.total_seconds())
    days, hours = abs(seconds) // 86400, abs(seconds) % 86400 // 3600
    return f"{days}d {hours}h left" if seconds > 0 else f"expired {days}d {hours}h ago"


def _store(args: argparse.Namespace):
    from .composition import build_store

    cfg = _config(args)
    return cfg, build_store(cfg)


def _read_input(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read ({e.strerror})") from None


def cmd_bundle_init(args: argparse.Namespace) -> int:
    from .composition import load_bundle, store_retry

    cfg, store = _store(args)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is not None:
        print(
            f"error: {store.description} already holds a trust bundle (version {current.version[:12]}); "
            "nothing was changed (use `bundle regenerate --backup-to URL` to replace it)",
            file=sys.stderr,
        )
        return 1
    loaded = load_bundle(cfg, store, datetime.now(UTC))
    verb = "created" if loaded.created else "another writer created"
    root = loaded.bundle.trust_anchors[0].subject.rfc4514_string()
    print(f"{store.description}: {verb} a trust bundle; root {root}")
    return 0


def cmd_bundle_import(args: argparse.Namespace) -> int:
    from ca_core.bundle import (
        ANCHORS,
        ISSUER_CHAIN,
        ISSUER_KEY,
        ROOT_KEY,
        ROTATION_STATE,
        parse_bundle,
        parse_public_bundle,
    )
    from ca_core.continuity import judge_replacement, kept_root_key
    from ca_core.rotation.codec import parse_state

    from .composition import directory_store, store_retry

    _, store = _store(args)
    if args.from_dir:
        if args.root or args.issuer_cert or args.issuer_key or args.root_key:
            raise ConfigError("--from takes a whole exported bundle: give no --root/--issuer-*/--root-key")
        source = directory_store(args.from_dir)
        exported = source.load()
        if exported is None:
            raise ConfigError(
                f"--from {args.from_dir}: no trust bundle there (write one with `bundle export`)"
            )
        new = parse_bundle(exported.items, source.labels())
        parse_state(exported.items, new, source.labels())  # verified before anything is written
        items = new.to_items()
        if ROTATION_STATE in exported.items:
            items[ROTATION_STATE] = exported.items[ROTATION_STATE]
        if ROOT_KEY in exported.items:
            items[ROOT_KEY] = exported.items[ROOT_KEY]
    else:
        missing = [f for f, v in (("--root", args.root), ("--issuer-cert", args.issuer_cert)) if not v]
        missing += ["--issuer-key"] if not args.issuer_key else []
        if missing:
            raise ConfigError(f"bundle import needs {', '.join(missing)} (or --from DIR)")
        items = {
            ANCHORS: _read_input(args.root, "--root"),
            ISSUER_CHAIN: _read_input(args.issuer_cert, "--issuer-cert"),
            ISSUER_KEY: _read_input(args.issuer_key, "--issuer-key"),
        }
        if args.root_key:
            items[ROOT_KEY] = _read_input(args.root_key, "--root-key")
        labels = {ANCHORS: f"--root {args.root}", ISSUER_CHAIN: f"--issuer-cert {args.issuer_cert}"}
        labels |= {ISSUER_KEY: f"--issuer-key {args.issuer_key}", ROOT_KEY: f"--root-key {args.root_key}"}
        new = parse_bundle(items, labels)  # verified before anything is written
        items = new.to_items()  # normalised: keys as PKCS#8, the root never in issuer.crt
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        if not store.create(items):
            print(f"error: {store.description} was written concurrently; nothing imported", file=sys.stderr)
            return 1
        print(f"{store.description}: imported the trust bundle")
        return 0
    try:
        old = parse_public_bundle(current.items, store.labels())
    except CAError as e:
        if not args.force:
            print(
                f"error: the current bundle in {store.description} cannot be read ({e}), so trust "
                "continuity cannot be checked; nothing was changed (use --force to replace it)",
                file=sys.stderr,
            )
            return 1
        old = None
    if old is not None:
        verdict = judge_replacement(old, current.items, new, items, datetime.now(UTC), force=args.force)
        if not verdict.allowed and verdict.dropped_root is not None:
            if args.from_dir:
                source, remedy = (
                    f"the trust anchors in --from {args.from_dir}",
                    "Import an export of this CA whose anchors include that root (e.g. a newer "
                    "`bundle export`), rotate with `sentryca rotate root`, or use --force.",
                )
            else:
                source, remedy = (
                    "the imported trust anchors",
                    "Add the current root to --root, rotate, or use --force.",
                )
            print(
                f"error: {source} do not include the current active root "
                f"{verdict.dropped_root.subject.rfc4514_string()}: every workload holding a current "
                f"certificate would stop being trusted. Nothing was changed. {remedy}",
                file=sys.stderr,
            )
            return 1
        # Keep the root key of an anchor that stays, so issuer rotation remains possible.
        kept = kept_root_key(current.items, new) if ROOT_KEY not in items else None
        if kept is not None:
            items[ROOT_KEY] = kept
    if not store.replace(items, current.version):
        print(
            f"error: {store.description} changed while importing; nothing imported, try again",
            file=sys.stderr,
        )
        return 1
    print(f"{store.description}: imported the trust bundle (replacing version {current.version[:12]})")
    return 0


def cmd_bundle_export(args: argparse.Namespace) -> int:
    from ca_core.bundle import parse_bundle

    from .composition import directory_store, store_retry

    _, store = _store(args)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        print(f"error: {store.description} is empty; nothing to export", file=sys.stderr)
        return 1
    try:
        parse_bundle(current.items, store.labels())
    except CAError as e:
        print(f"warning: exporting a bundle that does not load: {e}", file=sys.stderr)
    out = directory_store(args.out)
    if not out.create(current.items):
        print(f"error: {args.out} already holds a trust bundle; choose an empty directory", file=sys.stderr)
        return 1
    print(f"exported {store.description} to {args.out} ({', '.join(sorted(current.items))})")
    return 0


def cmd_bundle_regenerate(args: argparse.Namespace) -> int:
    from ca_core.bundle import generate_bundle
    from ca_core.policy import signing_policy

    from .composition import build_store, store_retry

    cfg, store = _store(args)
    backup = build_store(cfg, args.backup_to)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        print(f"error: {store.description} is empty; use `bundle init`", file=sys.stderr)
        return 1
    if not backup.create(current.items):
        print(
            f"error: the backup store {backup.description} is not empty; nothing was changed", file=sys.stderr
        )
        return 1
    saved = backup.load()
    if saved is None or dict(saved.items) != dict(current.items):
        print(
            f"error: the backup in {backup.description} does not read back; nothing was changed",
            file=sys.stderr,
        )
        return 1
    policy = signing_policy(cfg)
    bundle = generate_bundle(
        cfg.trust_domain, policy.ca_identity, datetime.now(UTC), algorithm=cfg.ca_key_algorithm
    )
    if not store.replace(bundle.to_items(), current.version):
        print(
            f"error: {store.description} changed meanwhile; nothing replaced (backup kept)", file=sys.stderr
        )
        return 1
    print(
        f"{store.description}: regenerated the trust bundle (new root "
        f"{bundle.trust_anchors[0].subject.rfc4514_string()}); the old one is in {backup.description}. "
        "Workloads must get the new trust anchors."
    )
    return 0


def _rotation_context(args: argparse.Namespace):
    """(config, store, stored, bundle, rotation state) of the store named by ``args``; logging
    set up so the audit records (``sentryca.audit``) of the steps go to stderr."""
    from ca_core.bundle import parse_bundle
    from ca_core.errors import BundleError
    from ca_core.rotation.codec import parse_state

    from .composition import store_retry
    from .logs import setup_logging

    cfg, store = _store(args)
    setup_logging(cfg.log_level, cfg.log_as_json)
    current = store_retry().run(f"read {store.description}", store.load)
    if current is None:
        raise BundleError(f"{store.description} holds no trust bundle; nothing to rotate")
    bundle = parse_bundle(current.items, store.labels())
    state = parse_state(current.items, bundle, store.labels())
    return cfg, store, current, bundle, state


def _write_rotation(store, current, result) -> int:
    """Write ``result`` only over the version read (CAS); audit and print each step."""
    from .logs import audit_rotation

    if not store.replace(result.items(), current.version):
        print(
            f"error: {store.description} changed while rotating (another replica or operator); nothing "
            "was written, run the command again",
            file=sys.stderr,
        )
        return 1
    for step in result.steps:
        audit_rotation(step, store.description)
        print(step.message)
    return 0


# What a running CA needs to see what the CLI wrote (it reads the store only then).
PICKED_UP = "with --store-poll-interval, or after a restart"


def cmd_rotate_issuer(args: argparse.Namespace) -> int:
    from ca_core.bundle import parse_certificates
    from ca_core.keys import load_private_key
    from ca_core.policy import rotation_policy
    from ca_core.rotation.actions import rotate_issuer

    cfg, store, current, bundle, state = _rotation_context(args)
    supplied = None
    if args.issuer_cert or args.issuer_key:
        if not (args.issuer_cert and args.issuer_key):
            raise ConfigError("--issuer-cert and --issuer-key go together")
        chain = parse_certificates(
            _read_input(args.issuer_cert, "--issuer-cert"), f"--issuer-cert {args.issuer_cert}"
        )
        while len(chain) > 1 and chain[-1] in bundle.trust_anchors:
            chain = chain[:-1]  # the root appended to the chain file
        try:
            key = load_private_key(_read_input(args.issuer_key, "--issuer-key"))
        except ValueError as e:
            raise ConfigError(f"--issuer-key {args.issuer_key}: {e}") from None
        supplied = (chain, key)
    result = rotate_issuer(bundle, state, datetime.now(UTC), rotation_policy(cfg), supplied)
    code = _write_rotation(store, current, result)
    if code == 0:
        print(
            f"A running CA signs with the new issuer once it loads this bundle ({PICKED_UP}); until "
            "then it keeps signing with the old one."
        )
    return code


def cmd_rotate_root(args: argparse.Namespace) -> int:
    from ca_core.policy import rotation_policy
    from ca_core.rotation.actions import emergency_root, prepare_root

    cfg, store, current, bundle, state = _rotation_context(args)
    policy = rotation_policy(cfg)
    now = datetime.now(UTC)
    if args.emergency:
        result = emergency_root(bundle, state, now, policy)
    else:
        result = prepare_root(bundle, state, now, policy)
    code = _write_rotation(store, current, result)
    if code == 0 and not args.emergency:
        print(
            f"The running CA takes the next steps itself ({PICKED_UP}); "
            "without one, run `sentryca rotate advance` after the propagation window."
        )
    if code == 0 and args.emergency:
        print(
            "Every workload must now fetch the new trust anchors (ca.crt) and a new certificate; "
            "certificates issued before no longer verify. Running CAs serve the new root once they load "
            f"this bundle ({PICKED_UP}).",
            file=sys.stderr,
        )
    return code


def cmd_rotate_advance(args: argparse.Namespace) -> int:
    from ca_core.policy import rotation_policy
    from ca_core.rotation.rules import advance, next_step_due

    cfg, store, current, bundle, state = _rotation_context(args)
    policy = rotation_policy(cfg)
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
    return _write_rotation(store, current, result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="sentryca",
        description="Workload-identity CA, wire-compatible with Dapr Sentry.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="run the CA (flags override SENTRY_* env vars, which override --config)",
    )
    add_options(p, SERVE_OPTIONS + STORE_OPTIONS)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "request",
        allow_abbrev=False,
        help="generate a key and CSR, have the CA sign it, verify and write the result",
    )
    _client_args(p, with_csr=False)
    p.add_argument("--key-algorithm", default="ecdsa-p256", help="ecdsa-p256 (default), ecdsa-p384, ed25519")
    p.set_defaults(func=cmd_request)
    p = sub.add_parser(
        "sign", allow_abbrev=False, help="have the CA sign a CSR made elsewhere, verify and write the result"
    )
    _client_args(p, with_csr=True)
    p.set_defaults(func=cmd_sign)
    p = sub.add_parser(
        "inspect", allow_abbrev=False, help="show the trust anchors and issuer of a store, with time left"
    )
    add_options(p, STORE_OPTIONS)
    p.set_defaults(func=cmd_inspect)

    bundle = sub.add_parser(
        "bundle", allow_abbrev=False, help="operate on the trust bundle in a store"
    ).add_subparsers(dest="bundle_command", required=True)
    gen_options = tuple(o for o in SERVE_OPTIONS if o.flag in ("trust-domain", "ca-key-algorithm"))
    p = bundle.add_parser("init", allow_abbrev=False, help="generate a root and issuer into an empty store")
    add_options(p, STORE_OPTIONS + gen_options)
    p.set_defaults(func=cmd_bundle_init)
    p = bundle.add_parser(
        "import", allow_abbrev=False, help="bring your own CA: verify, then write it into the store"
    )
    add_options(p, STORE_OPTIONS)
    p.add_argument("--root", help="PEM trust anchors (one or more self-signed roots)")
    p.add_argument("--issuer-cert", help="PEM issuer certificate (chain), issuer first")
    p.add_argument("--issuer-key", help="PEM issuer private key (PKCS#8, SEC1 or PKCS#1)")
    p.add_argument("--root-key", help="PEM root private key (lets the CA rotate issuers itself)")
    p.add_argument(
        "--from",
        dest="from_dir",
        help="a directory written by `bundle export` (every item: keys, root key, rotation state); "
        "instead of --root/--issuer-cert/--issuer-key/--root-key",
    )
    p.add_argument("--force", action="store_true", help="allow dropping the current active root")
    p.set_defaults(func=cmd_bundle_import)
    p = bundle.add_parser(
        "export", allow_abbrev=False, help="write the store's bundle to a directory (file-store layout)"
    )
    add_options(p, STORE_OPTIONS)
    p.add_argument("--out", required=True, help="an empty or new directory")
    p.set_defaults(func=cmd_bundle_export)
    p = bundle.add_parser(
        "regenerate", allow_abbrev=False, help="replace the CA with a new root and issuer, keeping a backup"
    )
    add_options(p, STORE_OPTIONS + gen_options)
    p.add_argument("--backup-to", required=True, help="an empty store URL that receives the old bundle")
    p.set_defaults(func=cmd_bundle_regenerate)

    rotate = sub.add_parser(
        "rotate", allow_abbrev=False, help="rotate the issuer or the root of the trust bundle in a store"
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
    p.add_argument("--issuer-key", help="PEM key of --issuer-cert (needed when the store has no root.key)")
    p.set_defaults(func=cmd_rotate_issuer)
    p = rotate.add_parser(
        "root",
        allow_abbrev=False,
        help="prepare a new root: a trust anchor now, its issuer active after --root-propagation-window",
    )
    add_options(p, rotation_options)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
