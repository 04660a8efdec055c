"""What the verbs share: the one refusal type, the configuration, the store and file I/O.

A verb refuses by raising :class:`CommandError`; ``main`` prints ``error: <message>`` to stderr
and exits with its code (0 success; 1 the CA or store refused or could not be used; 2 bad usage
or configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ca_core.config import load_config

if TYPE_CHECKING:
    from adapters.stores import BundleStore, StoredBundle
    from ca_core.config import Config

USAGE = 2  # exit code of bad usage or configuration
REFUSED = 1  # exit code of a refusal by the CA or the store


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


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with a fresh file of ``mode`` (never an existing file's mode,
    never through a symlink left at a temporary name). Raises OSError."""
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
