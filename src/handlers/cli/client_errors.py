"""What ``sentryca request`` and ``sign`` say when they cannot be used: the cause seen (by
``sentryca_client.diagnose``) and the flag to change, one cause per message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ca_core.bundle import FileNames
from ca_core.config import load_config
from ca_core.errors import ConfigError

from .common import REFUSED, USAGE, CommandError

if TYPE_CHECKING:
    from sentryca_client import Diagnosis

_ANCHORS_HINT = (
    "--trust-anchors must be the CA's ca.crt: the one in its --issuer-credentials directory, or "
    "from `sentryca bundle show --out DIR`"
)
# OpenSSL's reasons when the server's chain leads to none of the trust anchors
_NOT_CHAINED = ("unable to get local issuer certificate", "self signed certificate in certificate chain")


def read_trust_anchors(path: str) -> bytes:
    """The PEM certificates in ``path`` (``--trust-anchors``). Raises CommandError (exit 2) when
    the file cannot be read or holds no PEM certificate."""
    from cryptography import x509

    try:
        anchors = Path(path).read_bytes()
        x509.load_pem_x509_certificates(anchors)
    except OSError as e:
        raise CommandError(f"--trust-anchors {path}: {e.strerror}; {_ANCHORS_HINT}", USAGE) from None
    except ValueError:
        raise CommandError(
            f"--trust-anchors {path}: not a PEM file of certificates; {_ANCHORS_HINT}", USAGE
        ) from None
    return anchors


def connection_error(d: Diagnosis, args: argparse.Namespace) -> CommandError:
    """The refusal (exit 1) for a failed call to ``--server`` whose cause is ``d``."""
    from sentryca_client import Cause, split_server

    server = f"--server {args.server}"
    tried = f"{d.address}: " if d.address and d.address != args.server else ""
    at = f" ({d.address})" if tried else ""
    anchors = f"--trust-anchors {args.trust_anchors}"
    if d.cause is Cause.NAME_NOT_RESOLVED:
        host = split_server(args.server)[0]
        message = f"{server}: the host name {host} does not resolve ({d.reason}); check --server"
    elif d.cause is Cause.REFUSED:
        message = (
            f"nothing is listening at {server} ({tried}connection refused): is the CA running, and is "
            "this its gRPC port (`sentryca serve` prints it)?"
        )
    elif d.cause is Cause.NO_ROUTE:
        message = f"cannot reach {server} ({tried}{d.reason}): check --server and the network"
    elif d.cause is Cause.TIMED_OUT:
        message = (
            f"no connection to {server}{at} within --timeout {args.timeout:g} s: a wrong address, "
            "or a firewall dropping the packets"
        )
    elif d.cause is Cause.UNTRUSTED:
        why = (
            f"does not chain to {anchors} ({d.reason})"
            if d.reason in _NOT_CHAINED
            else f"does not verify against {anchors} ({d.reason})"
        )
        message = f"TLS handshake with {server} failed: the CA's certificate {why}. {_ANCHORS_HINT}"
    elif d.cause is Cause.WRONG_NAME:
        name = args.server_name or split_server(args.server)[0]
        given = "--server-name" if args.server_name else "--server"
        message = (
            f"TLS handshake with {server} failed: the CA's certificate has no SAN for {name!r} (the "
            f"name {given} gives). Use --server-name with a name it holds (localhost, 127.0.0.1, ::1, "
            "its listen address and its --server-names)"
        )
    elif d.cause is Cause.HANDSHAKE:
        message = (
            f"TLS handshake with {server}{at} failed ({d.reason}): is --server the CA's gRPC port "
            "(not its /healthz or /metrics port)?"
        )
    elif d.cause is Cause.NO_ANSWER:
        message = (
            f"{server}{at} accepted the connection but did not answer within {args.timeout:g} s: is it "
            "the CA's gRPC port? (a busy CA: raise --timeout)"
        )
    elif d.cause is Cause.ANSWERED:
        message = f"the CA refused the request: {d.code.name}: {d.details}"
    else:
        message = f"the call to {server} failed: {d.code.name}: {d.details}"
    return CommandError(message, REFUSED)


def store_in(out: Path) -> str | None:
    """Why ``out`` (``--out``) must not receive tls.crt and ca.crt because it is a trust-bundle
    store (the CA's own ca.crt would be replaced), or None. A store: the configured
    ``--issuer-credentials`` directory (SENTRY_* environment), or a directory holding an
    issuer certificate, issuer key, root key or the file store's ``..data`` link."""
    names = FileNames()
    configured: Path | None = None
    try:
        cfg = load_config({}, os.environ)
        names = cfg.file_names
        if cfg.store_url.startswith("file://"):
            configured = Path(cfg.store_url[len("file://") :])
    except ConfigError:
        pass  # a server's setting the client does not need; the files still tell a store
    if configured is not None and out.resolve() == configured.resolve():
        return f"--out {out} is the CA's trust-bundle store (--issuer-credentials)"
    for name in (names.issuer_certificate, names.issuer_key, names.root_key, "..data"):
        if os.path.lexists(out / name):
            return f"--out {out} is a trust-bundle store (it holds {name})"
    return None
