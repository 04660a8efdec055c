"""The bundle verbs with the JWT items (design §5.1, §5.4, §5.15, §11): `bundle export` and
`bundle import --from` carry them, `bundle show` hands out jwks.json, `inspect` shows the key id,
an import without JWT items keeps the current key, and one that drops it is refused."""

from __future__ import annotations

import json

from adapters.stores import FileBundleStore
from ca_core.bundle import parse_bundle
from ca_core.jwt_svid import JwtAlgorithm, key_ids, new_jwt_items

from support.cli import run_sentryca as run
from support.pki import make_bundle, write_bundle


def test_export_then_import_carries_the_jwt_items_and_inspect_and_show_name_the_key(tmp_path):
    bundle = make_bundle(jwt=JwtAlgorithm.ES256)
    store, backup, other = tmp_path / "store", tmp_path / "backup", tmp_path / "other"
    write_bundle(store, bundle)
    kid = key_ids(bundle.jwks)[0]

    r = run("inspect", "--trust-bundle-store", f"file://{store}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"jwks   key kid {kid}  ES256 EC" in r.stdout
    assert f"jwt: signing key kid {kid} (ES256), published in jwks.json" in r.stdout

    r = run("bundle", "export", "--trust-bundle-store", f"file://{store}", "--out", str(backup))
    assert r.returncode == 0, r.stderr
    assert "jwt.key" in r.stdout and (backup / "jwt.key").read_bytes() == bundle.to_items()["jwt.key"]

    r = run("bundle", "import", "--trust-bundle-store", f"file://{other}", "--from", str(backup))
    assert r.returncode == 0, r.stderr
    imported = parse_bundle(FileBundleStore(other).load().items)
    assert imported.jwks == bundle.jwks
    assert imported.jwt_key.private_numbers() == bundle.jwt_key.private_numbers()

    out = tmp_path / "public"
    r = run("bundle", "show", "--trust-bundle-store", f"file://{other}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "jwks.json").read_bytes() == bundle.jwks and not (out / "jwt.key").exists()
    r = run("bundle", "show", "--trust-bundle-store", f"file://{other}")
    assert "# jwks.json" in r.stdout and json.loads(r.stdout.split("# jwks.json")[1].split("\n", 1)[1])


def test_an_import_without_jwt_items_keeps_the_key_and_one_that_drops_it_is_refused(tmp_path):
    bundle = make_bundle(jwt=JwtAlgorithm.RS256)
    store = tmp_path / "store"
    write_bundle(store, bundle)
    # the same root with the X.509 items only: the current JWT key stays
    given = tmp_path / "given"
    given.mkdir()
    items = bundle.to_items()
    for name in ("ca.crt", "issuer.crt", "issuer.key"):
        (given / name).write_bytes(items[name])
    args = ("--root", str(given / "ca.crt"), "--issuer-cert", str(given / "issuer.crt"))
    args += ("--issuer-key", str(given / "issuer.key"))
    r = run("bundle", "import", "--trust-bundle-store", f"file://{store}", *args)
    assert r.returncode == 0, r.stderr
    assert "the current JWT key (jwt.key, jwks.json) is kept" in r.stderr
    assert parse_bundle(FileBundleStore(store).load().items).jwks == bundle.jwks

    # an export of the same root but another JWT key: tokens of the current key would stop verifying
    other = bundle.with_jwt(*new_jwt_items(JwtAlgorithm.RS256))
    elsewhere = tmp_path / "elsewhere"
    write_bundle(elsewhere, other)
    before = FileBundleStore(store).load()
    r = run("bundle", "import", "--trust-bundle-store", f"file://{store}", "--from", str(elsewhere))
    assert r.returncode == 1
    assert f"does not publish the JWT key(s) {key_ids(bundle.jwks)[0]}" in r.stderr
    assert FileBundleStore(store).load() == before
    r = run(
        "bundle", "import", "--trust-bundle-store", f"file://{store}", "--from", str(elsewhere), "--force"
    )
    assert r.returncode == 0, r.stderr
    assert parse_bundle(FileBundleStore(store).load().items).jwks == other.jwks
