"""`sentryca serve` on a store that lost its bundle, as an operator meets it (design §5.2): it exits
with status 1 and says what it found and what to run; nothing is written; `bundle init` needs
``--force`` there. (Every store kind: tests/adapters/test_stores.py.)"""

from __future__ import annotations

import shutil

from adapters.stores import FileBundleStore
from adapters.stores.files import HELD_MARKER

from support.cli import EPHEMERAL_PORTS, run_sentryca
from support.pki import make_bundle, snapshot


def test_serve_refuses_a_directory_whose_bundle_files_were_deleted(tmp_path):
    creds = tmp_path / "credentials"
    assert FileBundleStore(creds).create(make_bundle().to_items())
    for entry in creds.iterdir():  # `rm -rf credentials/* credentials/..?*`: the marker stays
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name != HELD_MARKER:
            entry.unlink()
    before = snapshot(creds)
    r = run_sentryca("serve", "--issuer-credentials", str(creds), *EPHEMERAL_PORTS, "--mode", "standalone")
    assert r.returncode == 1
    assert "refusing to start" in r.stderr and f"{creds / HELD_MARKER}" in r.stderr
    assert f"sentryca bundle import --trust-bundle-store file://{creds} --from DIR" in r.stderr
    assert "no trust bundle in" not in r.stderr  # never "generating a new root"
    assert snapshot(creds) == before and not (creds / "ca.crt").exists()

    r = run_sentryca("bundle", "init", "--issuer-credentials", str(creds))
    assert r.returncode == 1 and "--force" in r.stderr and "held one before" in r.stderr
    assert snapshot(creds) == before
    r = run_sentryca("bundle", "init", "--issuer-credentials", str(creds), "--force")
    assert r.returncode == 0, r.stderr
    assert FileBundleStore(creds).load() is not None


def test_serve_with_bootstrap_policy_never_refuses_a_fresh_directory(tmp_path):
    creds = tmp_path / "credentials"
    r = run_sentryca(
        "serve",
        "--issuer-credentials",
        str(creds),
        *EPHEMERAL_PORTS,
        env={"SENTRY_BOOTSTRAP_POLICY": "never"},
    )
    assert r.returncode == 1 and "--bootstrap-policy is never" in r.stderr
    assert "sentryca bundle init" in r.stderr and not creds.exists()
