"""`sentryca inspect` on a store that lost its bundle says so and names the restore, instead of
suggesting that `serve` will create one (design §5.2: a start refuses such a store)."""

from __future__ import annotations

import shutil

from adapters.stores import FileBundleStore

from support.cli import run_sentryca
from support.pki import make_bundle


def test_inspect_of_an_emptied_store_names_the_restore(tmp_path):
    store_dir = tmp_path / "credentials"
    store = FileBundleStore(store_dir)
    assert store.create(make_bundle().to_items())
    for path in store_dir.iterdir():  # the bundle's files go; the store's marker stays
        if not path.name.startswith(".sentryca"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    r = run_sentryca("inspect", "--issuer-credentials", str(store_dir))
    assert r.returncode == 1, r.stderr
    assert "empty, but it held a trust bundle before (" in r.stdout
    assert "sentryca bundle import --from DIR" in r.stdout
    assert "`sentryca serve` creates one" not in r.stdout


def test_inspect_of_a_fresh_store_says_serve_creates_one(tmp_path):
    r = run_sentryca("inspect", "--issuer-credentials", str(tmp_path / "fresh"))
    assert r.returncode == 1, r.stderr
    assert "empty (no trust bundle yet; `sentryca serve` creates one)" in r.stdout
