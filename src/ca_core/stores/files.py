"""The local-directory store (the embedded default; ``file://DIR``, ``--issuer-credentials``).

Layout compatible with Dapr Sentry's self-hosted credentials directory: ``ca.crt``,
``issuer.crt``, ``issuer.key`` (names configurable), plus ``root.key`` when the CA made the
root. Directory 0700 and files 0600 when created here; every file is replaced atomically
(temporary file, fsync, rename); writers on one machine are serialised with ``flock`` on the
directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..bundle import ANCHORS, ISSUER_CHAIN, ISSUER_KEY, PUBLIC_ITEMS, ROOT_KEY
from ..errors import BundleError, Unavailable
from .base import StoredBundle


@dataclass(frozen=True)
class FileNames:
    """File names of the items (``--issuer-ca-filename`` etc.)."""

    ca: str = "ca.crt"
    issuer_certificate: str = "issuer.crt"
    issuer_key: str = "issuer.key"
    root_key: str = "root.key"

    def mapping(self) -> dict[str, str]:
        """Logical item name → file name."""
        return {
            ANCHORS: self.ca,
            ISSUER_CHAIN: self.issuer_certificate,
            ISSUER_KEY: self.issuer_key,
            ROOT_KEY: self.root_key,
        }


def version_of(items: Mapping[str, bytes]) -> str:
    """A content hash over the items: equal bundles, equal versions."""
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode() + b"\0" + len(items[name]).to_bytes(8, "big") + items[name])
    return h.hexdigest()


class FileBundleStore:
    """A trust bundle in a local directory. ``directory``: path (created 0700 on first write)."""

    def __init__(self, directory: str | os.PathLike[str], names: FileNames | None = None) -> None:
        self.directory = Path(directory)
        self.names = names or FileNames()
        self.description = f"file://{self.directory}"

    def labels(self) -> dict[str, str]:
        return {item: str(self.directory / name) for item, name in self.names.mapping().items()}

    def path(self, item: str) -> Path:
        """The file holding logical ``item``."""
        return self.directory / self.names.mapping()[item]

    def _read(self, items: tuple[str, ...] | None = None) -> StoredBundle | None:
        found: dict[str, bytes] = {}
        for item in items or tuple(self.names.mapping()):
            p = self.path(item)
            try:
                found[item] = p.read_bytes()
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                raise BundleError("is a directory, not a file", item=str(p)) from None
            except PermissionError:
                raise Unavailable(f"{p}: permission denied reading the trust bundle") from None
            except OSError as e:
                raise Unavailable(f"{p}: cannot read the trust bundle ({e.strerror})") from None
        if not found:
            return None
        return StoredBundle(found, version_of(found))

    def load(self) -> StoredBundle | None:
        with self._shared():
            return self._read()

    def load_public(self) -> StoredBundle | None:
        with self._shared():
            return self._read(PUBLIC_ITEMS)

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        # A reader waits for a writer holding the exclusive lock, so it never sees a bundle
        # half-written by another process on this machine.
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            yield
            return
        except OSError as e:
            raise Unavailable(
                f"{self.directory}: cannot open the credentials directory ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        created = not self.directory.exists()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if created:
                os.chmod(self.directory, 0o700)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise Unavailable(
                f"{self.directory}: cannot use the credentials directory ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write_all(self, items: Mapping[str, bytes]) -> None:
        # Keys first, certificates last: a reader never sees a certificate without its key.
        order = [i for i in (ROOT_KEY, ISSUER_KEY, ISSUER_CHAIN, ANCHORS) if i in items]
        for item in order:
            self._atomic_write(self.path(item), items[item])
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:  # mkstemp creates the file 0600
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            hint = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise Unavailable(f"{path}: cannot write{hint}: {e.strerror}") from None

    def create(self, items: Mapping[str, bytes]) -> bool:
        with self._locked():
            if self._read() is not None:
                return False
            self._write_all(items)
            return True

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        with self._locked():
            current = self._read()
            if current is None or current.version != expected_version:
                return False
            self._write_all(items)
            return True
