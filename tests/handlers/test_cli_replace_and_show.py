"""Replacing a bundle and handing out its public part, as an operator runs the verbs against a file
store, S3 and Secrets Manager (moto): `bundle regenerate` says what running CAs do and where the
old keys went; `bundle import` replaces a damaged bundle only with --force; `bundle show` prints
no key; backups go to a 0700 directory the repository ignores, and the verb says where."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from adapters.stores import FileBundleStore, open_store
from ca_core.bundle import parse_bundle

from support import REPO_ROOT
from support.cli import run_sentryca as run
from support.pki import make_bundle, snapshot

RESTART = "To put it in force, restart every CA process (stop it and start it again"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def printed_backup(output: str) -> Path:
    """The backup directory a verb said it wrote (``.../.sentry/backups/<UTC time>``)."""
    (found,) = set(re.findall(r"(/\S*/\.sentry/backups/\d{8}T\d{6}Z(?:-\d+)?)", output))
    return Path(found)


def test_regenerate_says_what_running_cas_do_and_where_the_old_keys_are(store_url_env, tmp_path):
    url, env = store_url_env
    assert run("bundle", "init", "--trust-bundle-store", url, env=env).returncode == 0
    old = open_store(url).load()
    old_root = parse_bundle(old.items).trust_anchors[0].subject.rfc4514_string()
    r = run("bundle", "regenerate", "--trust-bundle-store", url, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    backup = printed_backup(r.stdout)
    assert backup.parent == tmp_path / ".sentry" / "backups"
    assert f"the old bundle, private keys included, is in file://{backup}" in r.stdout
    assert mode(backup) == mode(backup.parent) == mode(backup.parent.parent) == 0o700
    assert dict(FileBundleStore(backup).load().items) == dict(old.items)
    assert all(mode(backup / name) == 0o600 for name in old.items)
    assert (
        "Running CAs do NOT take this bundle by themselves: it drops the root they serve "
        f"({old_root}), so a CA polling its store (--store-poll-interval) refuses it (trust continuity), "
        "logs the refusal, counts it in sentryca_bundle_change_refused_total and goes on serving the "
        "old bundle, as does a CA that does not poll. " + RESTART
    ) in r.stderr
    assert "sentryca bundle show --out DIR" in r.stderr and 'docs/runbook.md, "Replace the CA"' in r.stderr
    assert "`sentryca rotate root --emergency`" in r.stderr  # the old bundle loaded: the rotation path


def test_regenerate_of_a_damaged_bundle_names_no_rotation_path(tmp_path):
    store = tmp_path / "store"
    assert FileBundleStore(store).create(make_bundle().to_items())
    (store / "issuer.key").unlink()
    r = run("bundle", "regenerate", "--issuer-credentials", str(store), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Running CAs do NOT take this bundle" in r.stderr and RESTART in r.stderr
    assert "rotate root --emergency" not in r.stderr
    assert set(FileBundleStore(printed_backup(r.stdout)).load().items) == {"ca.crt", "issuer.crt", "root.key"}


def damage(url: str, how: str) -> None:
    """Write a damaged bundle into the store at ``url`` (adapters never judge content)."""
    store = open_store(url)
    current = store.load()
    items = dict(current.items)
    if how == "missing":
        del items["issuer.key"]
    else:
        items["issuer.key"] = make_bundle().to_items()["issuer.key"]
    assert store.replace(items, current.version)


@pytest.mark.parametrize("how", ["missing", "mismatched"])
def test_import_from_onto_a_damaged_store_needs_force(store_url_env, tmp_path, how):
    url, env = store_url_env
    assert run("bundle", "init", "--trust-bundle-store", url, env=env).returncode == 0
    backup = tmp_path / "backup"
    r = run("bundle", "export", "--trust-bundle-store", url, "--out", str(backup), env=env)
    assert r.returncode == 0, r.stderr
    damage(url, how)
    store = open_store(url)
    damaged = store.load()
    problem = "missing" if how == "missing" else "does not match the public key of the issuer"
    r = run("bundle", "import", "--trust-bundle-store", url, "--from", str(backup), env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    (error,) = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: the current bundle in {store.description} is damaged (")
    assert problem in error and "issuer.key" in error
    assert error.endswith(
        "); nothing was changed. A damaged bundle is replaced only with --force (or by `bundle "
        "regenerate`); to keep a copy of it first: `sentryca bundle export`"
    )
    assert store.load() == damaged
    r = run("bundle", "import", "--trust-bundle-store", url, "--from", str(backup), "--force", env=env)
    assert r.returncode == 0, r.stderr
    assert dict(store.load().items) == dict(FileBundleStore(backup).load().items)
    # the backup keeps the root running CAs serve: they take it by themselves
    assert "Running CAs take this bundle at their next store poll" in r.stderr and RESTART not in r.stderr


def test_a_forced_import_of_another_ca_says_running_cas_refuse_it(tmp_path):
    store = tmp_path / "store"
    assert FileBundleStore(store).create(make_bundle().to_items())
    other = tmp_path / "other"
    assert FileBundleStore(other).create(make_bundle().to_items())
    r = run("bundle", "import", "--issuer-credentials", str(store), "--from", str(other), "--force")
    assert r.returncode == 0, r.stderr
    assert "Running CAs do NOT take this bundle by themselves" in r.stderr and RESTART in r.stderr
    assert "rotate root --emergency" not in r.stderr


def test_bundle_show_prints_the_public_part_and_never_a_key(store_url_env, tmp_path):
    url, env = store_url_env
    r = run("bundle", "show", "--trust-bundle-store", url, env=env)
    assert r.returncode == 1 and "is empty" in r.stderr
    assert run("bundle", "init", "--trust-bundle-store", url, env=env).returncode == 0
    bundle = parse_bundle(open_store(url).load().items)
    r = run("bundle", "show", "--trust-bundle-store", url, env=env)
    assert r.returncode == 0, r.stderr
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    assert x509.load_pem_x509_certificates(r.stdout.encode()) == [*bundle.trust_anchors, *bundle.issuer_chain]
    assert r.stdout.startswith("# ca.crt: the trust anchors (1)")
    out = tmp_path / "trust"
    r = run("bundle", "show", "--trust-bundle-store", url, "--out", str(out), env=env)
    assert r.returncode == 0 and "no private key" in r.stdout, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "issuer.crt"]
    assert (out / "ca.crt").read_bytes() == bundle.anchors_pem
    assert (out / "issuer.crt").read_bytes() == bundle.issuer_chain_pem
    assert mode(out / "ca.crt") == mode(out / "issuer.crt") == 0o644


def test_bundle_show_never_writes_into_a_store_or_a_backup(tmp_path):
    store = tmp_path / "store"
    assert FileBundleStore(store).create(make_bundle().to_items())
    before = snapshot(store)
    r = run("bundle", "show", "--issuer-credentials", str(store), "--out", str(store))
    assert r.returncode == 2 and "a store or a backup, not a directory to hand out" in r.stderr
    assert snapshot(store) == before and FileBundleStore(store).load() is not None


def test_export_without_out_writes_a_new_0700_backup_and_says_where(tmp_path):
    store = tmp_path / "store"
    assert FileBundleStore(store).create(make_bundle().to_items())
    r = run("bundle", "export", "--issuer-credentials", str(store), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = printed_backup(r.stdout)
    assert f"{first} holds private keys (issuer.key, root.key; directory 0700, files 0600)" in r.stdout
    assert first.parent == tmp_path / ".sentry" / "backups" and mode(first) == 0o700
    assert snapshot(first) == snapshot(store) and mode(first / "issuer.key") == 0o600
    r = run("bundle", "export", "--issuer-credentials", str(store), cwd=tmp_path)
    second = printed_backup(r.stdout)
    assert r.returncode == 0 and second != first and snapshot(second) == snapshot(store)


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs a git checkout"
)
@pytest.mark.parametrize(
    "path",
    [
        ".sentry/backups/20260101T000000Z/issuer.key",  # the default of export and regenerate
        ".sentry/backups/20260101T000000Z-2/..data/root.key",
        "sentryca-backup/root.key",  # where earlier versions of the runbook and README put them
        "sentryca-backup-20260101T000000Z/issuer.key",
        "bundle-backup/issuer.key",
    ],
)
def test_the_repository_ignores_where_backups_go(path):
    r = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "check-ignore", "--no-index", "-q", path], check=False, timeout=30
    )
    assert r.returncode == 0, f"{path} would show as untracked: add it to .gitignore"
