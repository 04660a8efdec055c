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
from sentryca_client.explain import ANCHORS_HINT, explain

from .common import REFUSED, USAGE, CommandError

if TYPE_CHECKING:
    from sentryca_client import Diagnosis


def read_trust_anchors(path: str) -> bytes:
    """The PEM certificates in ``path`` (``--trust-anchors``). Raises CommandError (exit 2) when
    the file cannot be read or holds no PEM certificate."""
    from cryptography import x509

    try:
        anchors = Path(path).read_bytes()
        x509.load_pem_x509_certificates(anchors)
    except OSError as e:
        raise CommandError(f"--trust-anchors {path}: {e.strerror}; {ANCHORS_HINT}", USAGE) from None
    except ValueError:
        raise CommandError(
            f"--trust-anchors {path}: not a PEM file of certificates; {ANCHORS_HINT}", USAGE
        ) from None
    return anchors


def connection_error(d: Diagnosis, args: argparse.Namespace) -> CommandError:
    """The refusal (exit 1) for a failed call to ``--server`` whose cause is ``d``
    (:func:`sentryca_client.explain.explain`)."""
    return CommandError(explain(d, args.server, args.trust_anchors, args.timeout, args.server_name), REFUSED)


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
