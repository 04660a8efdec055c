"""The local-directory store: permissions, atomic conditional writes, load-or-create (design §5)."""

import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from adapters.stores import FileBundleStore, FileNames, load_or_create, open_store
from adapters.stores.files import HELD_MARKER
from ca_core.bundle import ANCHORS, ISSUER_KEY
from ca_core.errors import BundleError, Unavailable

from support.pki import make_bundle, snapshot, write_bundle


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_create_writes_private_files_in_a_private_directory(tmp_path):
    d = tmp_path / "a" / "creds"
    store = FileBundleStore(d)
    assert store.create(make_bundle().to_items())
    assert mode(d) == 0o700
    visible = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert visible == ["ca.crt", "issuer.crt", "issuer.key", "root.key"]
    assert all(mode(d / n) == 0o600 for n in visible)  # the files the symlinks lead to
    hidden = sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.name != HELD_MARKER)
    assert hidden[0] == "..data" and len(hidden) == 2  # one generation, no temporary files left
    generation = d / hidden[1]
    assert mode(generation) == 0o700 and (d / "..data").resolve() == generation.resolve()
    assert mode(d / HELD_MARKER) == 0o600  # the evidence that this directory held a bundle


def test_create_is_conditional(tmp_path):
    store = FileBundleStore(tmp_path)
    first, second = make_bundle(), make_bundle()
    assert store.create(first.to_items())
    before = snapshot(tmp_path)
    assert not store.create(second.to_items())
    assert snapshot(tmp_path) == before


def test_replace_needs_the_current_version(tmp_path):
    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    stale = store.load().version
    newer = make_bundle().to_items()
    assert store.replace(newer, stale)
    assert store.load().items == newer
    assert not store.replace(make_bundle().to_items(), stale)
    assert store.load().items == newer


def test_version_changes_with_content(tmp_path):
    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    v1 = store.load().version
    (tmp_path / "ca.crt").write_bytes((tmp_path / "ca.crt").read_bytes() + b"\n")
    assert store.load().version != v1


def test_custom_file_names(tmp_path):
    names = FileNames(ca="root.pem", issuer_certificate="issuer.pem", issuer_key="issuer-key.pem")
    store = open_store(f"file://{tmp_path}", names)
    store.create(make_bundle().to_items())
    assert {"root.pem", "issuer.pem", "issuer-key.pem"} <= {p.name for p in tmp_path.iterdir()}
    assert set(store.load().items) >= {ANCHORS, ISSUER_KEY}


def test_load_public_reads_no_key(tmp_path):
    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    os.chmod(tmp_path / "issuer.key", 0)
    assert set(store.load_public().items) == {"ca.crt", "issuer.crt"}


def test_load_or_create_generates_once_then_loads(tmp_path):
    store = FileBundleStore(tmp_path)
    calls = []

    def generate():
        calls.append(1)
        return make_bundle()

    b1, v1, created1 = load_or_create(store, generate)
    b2, v2, created2 = load_or_create(store, generate)
    assert (created1, created2) == (True, False) and len(calls) == 1
    assert b1.trust_anchors == b2.trust_anchors and v1 == v2


def _racer(directory: str, barrier, results) -> None:
    store = FileBundleStore(directory)
    barrier.wait()
    bundle, _, created = load_or_create(store, make_bundle)
    results.put((bundle.anchors_pem, created))


def test_replicas_racing_on_an_empty_store_end_with_one_bundle(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path / "shared"), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert len({anchors for anchors, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert outcomes[0][0] == (tmp_path / "shared" / "ca.crt").read_bytes()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "issuer.key").unlink(), "missing"),
        (lambda d: (d / "ca.crt").write_bytes(b"not a certificate"), "ca.crt"),
        (lambda d: (d / "issuer.key").write_bytes(make_bundle().to_items()["issuer.key"]), "does not match"),
    ],
)
def test_damaged_bundle_is_refused_and_left_untouched(tmp_path, damage, words):
    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    damage(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(BundleError) as e:
        load_or_create(store, make_bundle)
    assert words in str(e.value) and "refusing to start" in str(e.value)
    assert str(tmp_path) in str(e.value)  # names the file
    assert snapshot(tmp_path) == before


def test_unknown_and_unavailable_schemes_are_clear():
    from ca_core.errors import ConfigError

    assert open_store("kubernetes://dapr-system/dapr-trust-bundle").description == (
        "kubernetes://dapr-system/dapr-trust-bundle"
    )  # no I/O yet: the client is built on first use
    with pytest.raises(ConfigError, match="not a valid Secret name"):
        open_store("kubernetes://dapr-system/Trust_Bundle")
    with pytest.raises(ConfigError, match="unknown option"):
        open_store("kubernetes://dapr-system/dapr-trust-bundle?x=1")
    with pytest.raises(ConfigError, match="NAMESPACE/SECRET"):
        open_store("kubernetes://dapr-system")
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store("ftp://x")
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store("/a/plain/path")
    with pytest.raises(ConfigError, match="s3://BUCKET/KEY"):
        open_store("s3://bucket-only")
    with pytest.raises(ConfigError, match="unknown option"):
        open_store("s3://bucket/key?kms=x")
    with pytest.raises(ConfigError, match="secretsmanager://NAME"):
        open_store("secretsmanager://")


def test_a_reader_never_sees_a_half_written_bundle(tmp_path):
    """While create() is between files, load() waits for it instead of returning a partial bundle."""
    import threading

    from ca_core.bundle import ANCHORS

    started, release = threading.Event(), threading.Event()

    class SlowItems(dict):
        def __getitem__(self, key):
            if key == ANCHORS:  # written last: the keys and issuer are already on disk
                started.set()
                release.wait(10)
            return super().__getitem__(key)

    store = FileBundleStore(tmp_path)
    items = make_bundle().to_items()
    writer = threading.Thread(target=store.create, args=(SlowItems(items),))
    writer.start()
    assert started.wait(10)
    assert not (tmp_path / "issuer.key").exists() and not (tmp_path / "ca.crt").exists()
    seen = []
    reader = threading.Thread(target=lambda: seen.append(store.load()))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive()  # blocked behind the writer
    release.set()
    writer.join(10)
    reader.join(10)
    assert dict(seen[0].items) == items


# -- crash safety: kill -9 at every step of a write ---------------------------------------------

_CRASH_CHILD = """
import os, signal, sys
from pathlib import Path
from adapters.stores import files

directory, items_dir, crash_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
calls = []

def crash(point):
    calls.append(point)
    if len(calls) == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)

files.crash_point = crash
store = files.FileBundleStore(directory)
items = {p.name: p.read_bytes() for p in items_dir.iterdir()}
current = store.load()
ok = store.replace(items, current.version) if current else store.create(items)
print(len(calls), ok)
"""


def _write_items(directory: Path, items: dict[str, bytes]) -> Path:
    directory.mkdir()
    for name, data in items.items():
        (directory / name).write_bytes(data)
    return directory


def _plain_dapr_layout(directory: Path, items: dict[str, bytes]) -> None:
    """A credentials directory as Dapr's Sentry writes it: plain files, no root key."""
    directory.mkdir(mode=0o700)
    for name in ("ca.crt", "issuer.crt", "issuer.key"):
        (directory / name).write_bytes(items[name])


@pytest.mark.parametrize(
    "start", ["empty", "atomic-layout", "dapr-plain-files", "drops-root-key", "gains-root-key"]
)
def test_kill_9_at_any_step_of_a_write_leaves_the_old_or_the_new_bundle(tmp_path, start):
    import subprocess
    import sys

    old = make_bundle().to_items()
    new = make_bundle().to_items()
    if start == "drops-root-key":  # an imported bundle without root.key replaces a generated one
        del new["root.key"]
    if start == "gains-root-key":  # a generated bundle replaces an imported one
        del old["root.key"]
    new_dir = _write_items(tmp_path / "new-items", new)
    crash_at, completed = 1, False
    while not completed:
        d = tmp_path / f"store-{crash_at}"
        if start in ("atomic-layout", "drops-root-key", "gains-root-key"):
            FileBundleStore(d).create(old)
        elif start == "dapr-plain-files":
            _plain_dapr_layout(d, old)
        expected_old = FileBundleStore(d).load()
        r = subprocess.run(
            [sys.executable, "-c", _CRASH_CHILD, str(d), str(new_dir), str(crash_at)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if r.returncode == 0:
            completed = True
            assert r.stdout.split()[1] == "True", r.stdout
        else:
            assert r.returncode == -9, r.stderr
        seen = FileBundleStore(d).load()
        seen_items = dict(seen.items) if seen else None
        old_items = dict(expected_old.items) if expected_old else None
        assert seen_items in (old_items, new), f"crash at step {crash_at}: a mixed bundle"
        if completed:
            assert seen_items == new
        # A store left by a crash takes the next write and ends clean.
        after = make_bundle().to_items()
        store = FileBundleStore(d)
        current = store.load()
        assert store.replace(after, current.version) if current else store.create(after)
        assert dict(store.load().items) == after
        leftovers = sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.name != HELD_MARKER)
        assert len(leftovers) == 2 and leftovers[0] == "..data"
        assert (d / HELD_MARKER).is_file()  # written once a bundle is in place, whatever crashed before
        crash_at += 1
    assert crash_at > 4  # the hook saw every step of the write


def test_a_directory_written_by_dapr_sentry_loads_and_converts_on_write(tmp_path):
    items = make_bundle().to_items()
    d = tmp_path / "dapr"
    _plain_dapr_layout(d, items)
    store = FileBundleStore(d)
    loaded = store.load()
    assert set(loaded.items) == {"ca.crt", "issuer.crt", "issuer.key"}
    bundle, _, created = load_or_create(store, make_bundle)
    assert not created and bundle.anchors_pem == items["ca.crt"]
    newer = make_bundle().to_items()
    assert store.replace(newer, loaded.version)
    for name in ("ca.crt", "issuer.crt", "issuer.key"):
        assert (d / name).is_symlink() and (d / name).read_bytes() == newer[name]


def test_a_vanished_generation_is_damage_not_an_empty_store(tmp_path):
    """..data pointing at a deleted generation: refuse, never generate a new CA."""
    import shutil

    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    shutil.rmtree(os.path.realpath(tmp_path / "..data"))
    links_before = {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()}
    generated = []
    with pytest.raises(BundleError, match="does not exist"):
        load_or_create(store, lambda: generated.append(1) or make_bundle())
    assert not generated
    assert {p.name: os.readlink(p) for p in tmp_path.iterdir() if p.is_symlink()} == links_before


@pytest.mark.parametrize(
    "error, reason",
    [
        (PermissionError(13, "Permission denied"), "store_denied"),
        (OSError(5, "I/O error"), "store_unreachable"),
    ],
)
def test_a_read_failure_never_creates_a_ca(tmp_path, monkeypatch, error, reason):
    from ca_core.errors import Unavailable

    store = FileBundleStore(tmp_path)
    store.create(make_bundle().to_items())
    before = snapshot(tmp_path)

    def failing_read(self):
        raise error

    monkeypatch.setattr(Path, "read_bytes", failing_read)  # the disk, not the store, fails
    generated = []
    with pytest.raises(Unavailable) as e:
        load_or_create(store, lambda: generated.append(1) or make_bundle())
    monkeypatch.undo()
    assert e.value.reason == reason and not generated
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("dir_mode", [0o777, 0o770, 0o702])
def test_a_group_or_world_writable_directory_is_refused(tmp_path, dir_mode):
    d = tmp_path / "creds"
    write_bundle(d, make_bundle())
    os.chmod(d, dir_mode)
    for use in (FileBundleStore(d).load, lambda: FileBundleStore(d).create({"ca.crt": b"x"})):
        with pytest.raises(Unavailable) as e:
            use()
        assert e.value.reason == "store_misconfigured"
        assert f"mode {dir_mode:04o}" in str(e.value) and f"chmod 700 {d}" in str(e.value)


def test_a_readable_directory_is_used_with_one_warning(tmp_path, caplog):
    d = tmp_path / "creds"
    write_bundle(d, make_bundle())
    os.chmod(d, 0o755)
    store = FileBundleStore(d)
    with caplog.at_level(logging.WARNING):
        assert store.load() is not None and store.load() is not None
    warnings = [r.getMessage() for r in caplog.records if "0755" in r.getMessage()]
    assert len(warnings) == 1 and f"chmod 700 {d}" in warnings[0]
