"""`--root-ttl`/`--issuer-ttl` through the CLI as an operator runs it (issue 16, item 4):
`bundle init` generates with them, `inspect` shows each certificate's lifetime, the rotate verbs
keep the lifetime of what they replace unless told otherwise, and a lifetime the rotation
thresholds cannot work with is refused with exit status 2 and nothing written."""

from __future__ import annotations

from datetime import timedelta

from adapters.stores import FileBundleStore
from ca_core.bundle import parse_bundle
from ca_core.bundle_settings import validity
from ca_core.rotation.codec import parse_state

from support.cli import run_sentryca as run
from support.pki import snapshot

H, D = timedelta(hours=1), timedelta(days=1)
SKEW = timedelta(minutes=15)  # the backdate: NotBefore = now - 15 min


def read(store_dir):
    stored = FileBundleStore(store_dir).load()
    bundle = parse_bundle(stored.items)
    return bundle, parse_state(stored.items, bundle)


def test_bundle_init_and_the_rotate_verbs_use_and_keep_the_lifetimes(tmp_path):
    store = tmp_path / "credentials"
    url = f"file://{store}"
    r = run("bundle", "init", "--trust-bundle-store", url, "--root-ttl", "168h", "--issuer-ttl", "24h")
    assert r.returncode == 0, r.stderr
    assert "root CN=sentryca root" in r.stdout and "(lifetime 7d 0h15m," in r.stdout
    assert "issuer (lifetime 1d 0h15m," in r.stdout
    bundle, _ = read(store)
    assert validity(bundle.trust_anchors[0]) == 7 * D + SKEW and validity(bundle.issuer) == 24 * H + SKEW

    r = run("inspect", "--trust-bundle-store", url)
    assert r.returncode == 0, r.stderr
    assert "lifetime 7d 0h15m" in r.stdout and "lifetime 1d 0h15m" in r.stdout

    # no option: the rotation keeps the 24 h of the issuer it replaces, and warns that 24 h
    # leaves get cut by such an issuer
    r = run("rotate", "issuer", "--trust-bundle-store", url, "--auto-rotate", "true")
    assert r.returncode == 0, r.stderr
    assert "root lifetime 168h0m0s (the bundle's), issuer lifetime 24h0m0s (the bundle's)" in r.stdout
    assert "warning: --workload-cert-ttl 24h0m0s is longer than the 4h2m30s" in r.stderr
    rotated, _ = read(store)
    assert rotated.issuer != bundle.issuer and validity(rotated.issuer) == 24 * H + SKEW

    # the option: a 48 h issuer from now on; full-length 8 h leaves, no warning
    r = run(
        "rotate", "issuer", "--trust-bundle-store", url, "--issuer-ttl", "48h",
        "--workload-cert-ttl", "8h", "--auto-rotate", "true",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "issuer lifetime 48h0m0s (--issuer-ttl)" in r.stdout and "warning" not in r.stderr
    longer, _ = read(store)
    assert validity(longer.issuer) == 48 * H + SKEW

    # rotate root keeps the root's 7 days and the issuer's (now) 48 h
    r = run("rotate", "root", "--trust-bundle-store", url, "--workload-cert-ttl", "8h")
    assert r.returncode == 0, r.stderr
    _, state = read(store)
    assert validity(state.prepared_root.root) == 7 * D + SKEW
    assert validity(state.prepared_root.issuer_chain[0]) == 48 * H + SKEW
    assert "root lifetime 168h0m0s (the bundle's), issuer lifetime 48h0m0s (the bundle's)" in r.stdout


def test_lifetimes_the_thresholds_cannot_work_with_are_refused_and_nothing_is_written(tmp_path):
    store = tmp_path / "credentials"
    url = f"file://{store}"
    r = run("bundle", "init", "--trust-bundle-store", url, "--root-ttl", "48h")
    assert r.returncode == 2
    assert "--root-ttl 48h0m0s is too short: at least 72h0m0s (3 x --root-propagation-window" in r.stderr
    assert not store.exists() or not any(store.iterdir())
    r = run("bundle", "init", "--trust-bundle-store", url, "--root-ttl", "100h", "--issuer-ttl", "200h")
    assert r.returncode == 2 and "an issuer never outlives its root" in r.stderr
    assert run("bundle", "init", "--trust-bundle-store", url).returncode == 0
    before = snapshot(store)
    r = run("rotate", "issuer", "--trust-bundle-store", url, "--issuer-ttl", "6h")
    assert r.returncode == 2 and "--issuer-ttl 6h0m0s is too short: at least 12h0m0s" in r.stderr
    assert snapshot(store) == before
    # a default bundle: one year each, as before
    bundle, _ = read(store)
    assert validity(bundle.trust_anchors[0]) == validity(bundle.issuer) == 365 * D + SKEW
