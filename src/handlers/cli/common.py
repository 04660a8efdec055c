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
    from adapters.stores import BundleStore
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
