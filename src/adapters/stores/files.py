"""The local-directory store (the embedded default; ``file://DIR``, ``--issuer-credentials``).

Layout compatible with Dapr Sentry's self-hosted credentials directory: ``ca.crt``,
``issuer.crt``, ``issuer.key`` (names configurable) readable at ``DIR/<name>``, plus
``root.key`` when the CA made the root (and ``rotation.json`` once rotation keeps state).

Crash safety uses the Kubernetes "atomic writer" layout: a bundle is written into a fresh hidden
generation directory ``DIR/..gen.XXXX``; ``DIR/..data`` is a symlink to the current generation,
swapped with one ``rename``; the visible names are symlinks ``<name> -> ..data/<name>``. Every
visible name needed by the new bundle exists (as a symlink, possibly dangling into the old
generation, which reads as "absent") *before* the swap, so at every instant a reader sees exactly
one generation: a ``kill -9`` at any point leaves the old or the new complete bundle. A directory
of plain files (written by Dapr's Sentry or by hand) loads as is; the first write here converts it,
first into a copy of itself (same content), then swaps as above.

Directory 0700 and files 0600 when created here; an existing directory that is group- or
world-writable is refused, one readable by others is used with a warning (design §5.6); writers
on one machine are serialised with ``flock`` on the directory, readers take a shared lock.

Every write also leaves the marker ``DIR/.sentryca-held`` (0600, written atomically after the
bundle is in place, and never removed): it records that the directory held a bundle, so a
directory whose bundle files were deleted is not taken for a first start (``held_before``). It
survives the deletion of the bundle's files, not of the directory itself: a CA that must never
start a new root there runs with ``--bootstrap-policy never``. The marker also carries the
record of the last accepted bundle (its public part, ``load_accepted``; design §5.4): rewritten
with every write here and repaired by ``publish_public`` from a bundle a CA accepted, so a bundle
written into the directory by other means is judged against it when a CA starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from ca_core.bundle import (
    ANCHORS,
    ISSUER_CHAIN,
    JWKS,
    KEY_ITEMS,
    PUBLIC_ITEMS,
    ROTATION_STATE,
    FileNames,
)
from ca_core.errors import BundleError, Unavailable
from ca_core.rotation.document import public_items

from .base import StoredBundle, decode_document, encode_document

log = logging.getLogger(__name__)

DATA_LINK = "..data"
_GEN_PREFIX = "..gen."
HELD_MARKER = ".sentryca-held"
_RECORD_LINE = "the last accepted bundle's public part (what trust continuity judges a start by):"


def _no_crash(point: str) -> None:
    return None


# Test hook: called with the name of each step of a write; the crash-safety test sets it (in a
# subprocess) to kill the process at one step. Never set by the product.
crash_point: Callable[[str], None] = _no_crash


def version_of(items: Mapping[str, bytes]) -> str:
    """A content hash over the items: equal bundles, equal versions."""
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode() + b"\0" + len(items[name]).to_bytes(8, "big") + items[name])
    return h.hexdigest()


@contextlib.contextmanager
def _flocked(fd: int, operation: int) -> Iterator[None]:
    """Hold ``flock(fd, operation)``; closing ``fd`` at the end releases it."""
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


# Keys first, certificates last (matters only for readers of a half-adopted directory).
_WRITE_ORDER = (*KEY_ITEMS, ROTATION_STATE, JWKS, ISSUER_CHAIN, ANCHORS)


class FileBundleStore:
    """A trust bundle in a local directory. ``directory``: path (created 0700 on first write)."""

    def __init__(self, directory: str | os.PathLike[str], names: FileNames | None = None) -> None:
        self.directory = Path(directory)
        self.names = names or FileNames()
        self.description = f"file://{self.directory}"
        self._warned_readable = False

    def labels(self) -> dict[str, str]:
        return {item: str(self.directory / name) for item, name in self.names.mapping().items()}

    def path(self, item: str) -> Path:
        """The visible path of logical ``item``."""
        return self.directory / self.names.mapping()[item]

    # -- reading ---------------------------------------------------------------------------

    def _read(self, items: tuple[str, ...] | None = None) -> StoredBundle | None:
        data = self.directory / DATA_LINK
        if data.is_symlink() and not data.exists():
            # The generation in force is gone: every visible name dangles. That is damage, not
            # an empty store, and must never lead to a new CA.
            raise BundleError(
                f"points to {os.readlink(data)}, which does not exist: the current bundle's files are "
                "gone (restore them from a backup, or regenerate explicitly)",
                item=str(data),
            )
        found: dict[str, bytes] = {}
        for item in items or tuple(self.names.mapping()):
            p = self.path(item)
            try:
                found[item] = p.read_bytes()
            except FileNotFoundError:  # absent, or a symlink into a generation without it
                continue
            except IsADirectoryError:
                raise BundleError("is a directory, not a file", item=str(p)) from None
            except PermissionError:
                raise Unavailable(
                    f"{p}: permission denied reading the trust bundle", reason="store_denied"
                ) from None
            except OSError as e:
                raise Unavailable(
                    f"{p}: cannot read the trust bundle ({e.strerror})", reason="store_unreachable"
                ) from None
        if not found:
            return None
        return StoredBundle(found, version_of(found))

    def load(self) -> StoredBundle | None:
        with self._shared() as exists:
            return self._read() if exists else None

    def publish_public(self, stored: StoredBundle) -> None:
        """Repair the marker's record of the last accepted bundle from ``stored`` (accepted)
        while the directory holds that version (the files are the public part); logs failures.
        A directory without a marker (written by Dapr's Sentry) is left as it is."""
        if not (self.directory / HELD_MARKER).is_file():
            return
        try:
            record = self.load_accepted()
        except (BundleError, Unavailable):
            record = None
        if record is not None and record.items == public_items(stored.items):
            return
        try:
            with self._locked():
                current = self._read()
                if current is None or current.version != stored.version:
                    return
                self._mark_held(stored.items, record=True)
        except (OSError, Unavailable, BundleError) as e:
            log.info("%s: cannot record the accepted bundle in %s (%s)", self.directory, HELD_MARKER, e)

    def load_accepted(self) -> StoredBundle | None:
        """The marker's record of the last accepted bundle, or None (no marker or record)."""
        with self._shared() as exists:
            text = self._read_marker() if exists else None
        _, found, document = (text or "").partition(_RECORD_LINE + "\n")
        if not found:
            return None
        items = decode_document(document, str(self.directory / HELD_MARKER))
        return StoredBundle(items, version_of(items))

    def find_accepted(self, record: Mapping[str, bytes]) -> StoredBundle | None:
        """None: the directory keeps no earlier bundle."""
        return None

    def held_before(self) -> str | None:
        """The marker ``.sentryca-held``, or the ``..data`` link left once the bundle's files are
        gone (a generation directory alone is no evidence: a first write cut short, e.g. by a full
        disk, leaves one); None for a missing directory or one without either."""
        with self._shared() as exists:
            if not exists:
                return None
            marker = self.directory / HELD_MARKER
            text = self._read_marker()
            if text is not None:
                lines = text.strip().splitlines()
                written = datetime.fromtimestamp(marker.stat().st_mtime, UTC).isoformat(timespec="seconds")
                what = "; ".join([f"written {written}", *lines[1:2]])
                return f"the marker {marker} records that this directory held a trust bundle ({what})"
            data = self.directory / DATA_LINK
            if data.is_symlink():  # only ever made by swapping a complete bundle in
                return (
                    f"the link {data} remains of a trust bundle that was in force here (its files are gone)"
                )
            return None

    def _read_marker(self) -> str | None:
        """The marker's text (under a lock taken by the caller), None when there is none."""
        marker = self.directory / HELD_MARKER
        try:
            return marker.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unavailable(
                f"{marker}: cannot read the marker of a bundle held before ({e.strerror})",
                reason="store_denied" if e.errno in (errno.EACCES, errno.EPERM) else "store_unreachable",
            ) from None

    def load_public(self) -> StoredBundle | None:
        with self._shared() as exists:
            stored = self._read((*PUBLIC_ITEMS, ROTATION_STATE)) if exists else None
        if stored is None:
            return None
        # the keys of a prepared rotation stay out of what public readers are handed
        return StoredBundle(public_items(stored.items), stored.version)

    # -- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _shared(self) -> Iterator[bool]:
        # A reader waits for a writer holding the exclusive lock, so it never reads the visible
        # names while a generation is being swapped or cleaned up.
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            # No directory: the store is empty now. Reading on without the lock could see a
            # writer that creates the directory meanwhile half-way through its first write.
            yield False
            return
        except OSError as e:
            raise self._unusable_directory("open", e) from None
        with _flocked(fd, fcntl.LOCK_SH):
            self._check_mode(fd)
            yield True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        created = not self.directory.exists()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if created:
                os.chmod(self.directory, 0o700)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise self._unusable_directory("use", e) from None
        with _flocked(fd, fcntl.LOCK_EX):
            self._check_mode(fd)
            yield

    def _check_mode(self, fd: int) -> None:
        """design §5.6: a group- or world-writable directory is refused (anyone who may write
        there could swap the CA's keys); a group- or world-readable one is used with a warning."""
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Unavailable(
                f"{self.directory}: the credentials directory is group- or world-writable (mode "
                f"{mode:04o}), so others could replace the CA's keys; fix it with: "
                f"chmod 700 {self.directory}",
                reason="store_misconfigured",
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and not self._warned_readable:
            self._warned_readable = True
            log.warning(
                "%s: the credentials directory is accessible to its group or others (mode %04o); "
                "chmod 700 %s",
                self.directory,
                mode,
                self.directory,
            )

    def _unusable_directory(self, verb: str, e: OSError) -> Unavailable:
        return Unavailable(
            f"{self.directory}: cannot {verb} the credentials directory ({e.strerror})",
            reason="store_denied" if e.errno in (errno.EACCES, errno.EPERM) else "store_unreachable",
        )

    # -- writing (atomic writer) -----------------------------------------------------------

    def _write_all(self, items: Mapping[str, bytes], *, record: bool) -> None:
        try:
            self._write_generation_swap(items, record)
        except OSError as e:
            hint = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise Unavailable(
                f"{self.directory}: cannot write the trust bundle{hint}: {e.strerror}",
                reason="store_unreachable",
            ) from None

    def _write_generation_swap(self, items: Mapping[str, bytes], record: bool) -> None:
        d = self.directory
        names = self.names.mapping()
        self._remove_stale()
        self._adopt_plain_files()
        new_gen = self._write_generation(items)
        crash_point("generation-written")
        # Every visible name of the new bundle exists before the swap; a new one dangles into
        # the current generation (reads as absent) until ..data moves.
        for item in items:
            self._link_visible(names[item])
        crash_point("links-prepared")
        self._symlink_atomically(new_gen.name, d / DATA_LINK)
        _fsync_dir(d)
        crash_point("data-swapped")
        # Cosmetic clean-up: visible links of items the new bundle lacks dangle now.
        for item, name in names.items():
            p = d / name
            if item not in items and p.is_symlink() and os.readlink(p) == f"{DATA_LINK}/{name}":
                p.unlink()
        self._remove_stale(keep=new_gen.name)
        _fsync_dir(d)
        crash_point("cleaned")
        try:
            self._mark_held(items, record=record)
        except OSError as e:  # the bundle is written; only the evidence of it is missing
            log.warning("%s: cannot write the marker %s (%s)", d, HELD_MARKER, e.strerror)
        crash_point("marked")

    def _write_generation(self, items: Mapping[str, bytes]) -> Path:
        gen = Path(tempfile.mkdtemp(prefix=_GEN_PREFIX, dir=self.directory))  # 0700
        names = self.names.mapping()
        order = [i for i in _WRITE_ORDER if i in items]
        for item in order:
            fd = os.open(gen / names[item], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(items[item])
                f.flush()
                os.fsync(f.fileno())
            crash_point(f"item-written:{item}")
        _fsync_dir(gen)
        return gen

    def _adopt_plain_files(self) -> None:
        """Turn plain files (a Dapr-written directory, or a conversion cut short) into the atomic
        layout without changing what the directory shows: copy the visible bundle into a
        generation, point ``..data`` at it, then replace each plain file by a symlink to the
        same content."""
        d = self.directory
        plain = [
            item
            for item, name in self.names.mapping().items()
            if (d / name).is_file() and not (d / name).is_symlink()
        ]
        if not plain:
            return
        current = self._read()
        if current is None:  # a plain file was just seen, under the lock: only a foreign writer
            raise Unavailable(f"{d}: the bundle files vanished while being read", reason="store_unreachable")
        gen = self._write_generation(current.items)
        self._symlink_atomically(gen.name, d / DATA_LINK)
        _fsync_dir(d)
        crash_point("adopt-data-linked")
        for item in plain:
            self._link_visible(self.names.mapping()[item])
            crash_point(f"adopt-linked:{item}")
        _fsync_dir(d)

    def _link_visible(self, name: str) -> None:
        p = self.directory / name
        target = f"{DATA_LINK}/{name}"
        if p.is_symlink() and os.readlink(p) == target:
            return
        self._symlink_atomically(target, p)

    def _symlink_atomically(self, target: str, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.lnk")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, path)

    def _remove_stale(self, keep: str | None = None) -> None:
        """Remove generations other than the current one and leftover temporary links."""
        d = self.directory
        current = os.readlink(d / DATA_LINK) if (d / DATA_LINK).is_symlink() else None
        for entry in d.iterdir():
            if entry.name.startswith(_GEN_PREFIX) and entry.name not in (current, keep):
                for f in entry.iterdir():
                    f.unlink()
                entry.rmdir()
            elif entry.name.startswith(".") and entry.name.endswith(".lnk") and entry.is_symlink():
                entry.unlink()
            elif entry.name.startswith(f"{HELD_MARKER}.") and entry.name.endswith(".tmp"):
                entry.unlink()

    def _mark_held(self, items: Mapping[str, bytes], *, record: bool) -> None:
        """Write the marker ``.sentryca-held`` (temporary file, fsync, rename), after the bundle
        is in place; with ``record``, ``items`` become its record of the last accepted bundle
        (a replace leaves the record to whoever accepts the bundle). Its first lines (the anchors
        first written) are kept. A crash before leaves a bundle without marker or with the
        previous record (the next create or accepted load repairs it), never a marker without a
        bundle."""
        marker = self.directory / HELD_MARKER
        try:
            head = marker.read_text(errors="replace").split(_RECORD_LINE)[0]
            if not record:
                return
        except FileNotFoundError:
            anchors = hashlib.sha256(items.get(ANCHORS, b"")).hexdigest()
            head = (  # when: the file's mtime
                "sentryca: this directory held a trust bundle; its deletion must not lead to a new CA\n"
                f"trust anchors ({self.names.ca}) when first written: sha256 {anchors}\n"
            )
        text = head + (f"{_RECORD_LINE}\n{encode_document(public_items(items))}" if record else "")
        tmp = self.directory / f"{HELD_MARKER}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        _fsync_dir(self.directory)

    def create(self, items: Mapping[str, bytes]) -> bool:
        with self._locked():
            if self._read() is not None:
                return False
            self._write_all(items, record=True)
            return True

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        return self.replace_version(items, expected_version) is not None

    def replace_version(self, items: Mapping[str, bytes], expected_version: str) -> str | None:
        with self._locked():
            current = self._read()
            if current is None or current.version != expected_version:
                return None
            self._write_all(items, record=False)
            return version_of(items)  # what _read() computes over the same items


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
