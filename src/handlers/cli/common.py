"""What the verbs share: the one refusal type, the configuration, the store and file I/O.

A verb refuses by raising :class:`CommandError`; ``main`` prints ``error: <message>`` to stderr
and exits with its code (0 success; 1 the CA or store refused or could not be used; 2 bad usage
or configuration).
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ca_core.config import explicit_source, load_config

if TYPE_CHECKING:
    from adapters.stores import BundleStore, StoredBundle
    from ca_core.bundle_settings import BundleSettings, Change, Settled
    from ca_core.config import Config

USAGE = 2  # exit code of bad usage or configuration
REFUSED = 1  # exit code of a refusal by the CA or the store
# Where verbs put a backup (private keys) when not told: beside the default store, in a folder
# the repository's .gitignore lists (.sentry/).
BACKUPS = Path(".sentry") / "backups"


class CommandError(Exception):
    """A verb's refusal: ``message`` (without the ``error:`` prefix) and the process exit code."""

    def __init__(self, message: str, exit_code: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _read_text(path: str) -> str:
    return Path(path).read_text()


def config(args: argparse.Namespace) -> Config:
    """The configuration of ``args`` over the SENTRY_* environment and ``--config`` (design §7).
    Raises ConfigError."""
    return load_config(args, os.environ, _read_text)


def open_store(args: argparse.Namespace) -> tuple[Config, BundleStore]:
    """The configuration of ``args`` and the trust-bundle store it names. Raises ConfigError."""
    from handlers.composition import build_store

    cfg = config(args)
    return cfg, build_store(cfg)


def short_version(version: str) -> str:
    """A store's version token as every verb shows it: its first 12 characters, without the
    quotes of an S3 ETag. Each store's token (a content hash, an ETag, a Secrets Manager version
    id, a resourceVersion) tells versions apart in 12; audit records and JSON summaries carry
    the whole token, which starts with these 12, so either greps the other."""
    return version.strip('"')[:12]


def shown_version(store: BundleStore, public: StoredBundle) -> str:
    """:func:`short_version` of the whole bundle in ``store`` (the token `bundle init`,
    `bundle import` and every compare-and-swap write use), read again; of ``public`` (read by
    ``load_public``, whose token may be the public part's own), marked so, when the whole
    bundle cannot be read here."""
    from ca_core.errors import CAError

    try:
        whole = store.load()
    except CAError:
        whole = None
    if whole is None:
        return f"{short_version(public.version)} of the public part"
    return short_version(whole.version)


def read_input(path: str, flag: str) -> bytes:
    """The bytes of the file ``path`` given to ``flag``; CommandError (exit 2) when unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"{flag} {path}: cannot read ({e.strerror})", USAGE) from None


def settle_with_bundle(
    args: argparse.Namespace,
    cfg: Config,
    bundle: BundleSettings,
    change: Change,
    verb: str,
    where: str,
    *,
    algorithm: bool = True,
) -> tuple[Config, Settled]:
    """``cfg`` with the trust domain and key algorithm ``verb`` generates with for the bundle
    described by ``bundle`` (``ca_core.bundle_settings.settle``: the bundle's, unless the operator
    gave a setting explicitly by flag or ``SENTRY_*`` variable), and the settled values.
    ``algorithm``: False when the verb generates no key (an explicit algorithm is then ignored).
    Raises ConfigError when an explicit setting contradicts the bundle."""
    from ca_core.bundle_settings import Given, settle

    td_source = explicit_source(args, os.environ, "trust_domain")
    alg_source = explicit_source(args, os.environ, "ca_key_algorithm") if algorithm else None
    settled = settle(
        bundle,
        cfg,
        change,
        verb=verb,
        where=where,
        trust_domain=Given(cfg.trust_domain, td_source) if td_source else None,
        algorithm=Given(cfg.ca_key_algorithm, alg_source) if alg_source else None,
    )
    return cfg.with_changes(trust_domain=settled.trust_domain, ca_key_algorithm=settled.algorithm), settled


def new_backup_directory(now: datetime) -> Path:
    """A new, empty directory for a backup: ``.sentry/backups/<UTC time>`` under the working
    directory (``20250101T120000Z``, then ``-2``, ``-3`` … if taken), mode 0700, its parents
    created 0700 when absent. Raises CommandError (1) when it cannot be created."""
    try:
        for parent in (BACKUPS.parent, BACKUPS):
            if not parent.exists():
                parent.mkdir(mode=0o700)
                os.chmod(parent, 0o700)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        for n in range(1, 100):
            path = BACKUPS / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            os.chmod(path, 0o700)
            return path.absolute()
    except OSError as e:
        raise CommandError(f"cannot create a backup directory under {BACKUPS} ({e.strerror})") from None
    raise CommandError(f"cannot create a backup directory under {BACKUPS}: every name for {stamp} is taken")
