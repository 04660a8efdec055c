"""`sentryca serve` on every store kind, and the `sentryca bundle` verbs, run as a user would."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adapters.stores import open_store

from support.aws import TEST_BUCKET
from support.cli import EPHEMERAL_PORTS, serve
from support.cli import run_sentryca as run
from support.kube import KUBE_NAMESPACE
from support.pki import make_bundle, snapshot, write_bundle


def store_url(kind: str, tmp_path: Path) -> str:
    tag = uuid.uuid4().hex[:10]
    return {
        "file": f"file://{tmp_path / tag}",
        "s3": f"s3://{TEST_BUCKET}/cli/{tag}.json",
        "secretsmanager": f"secretsmanager://sentryca/cli-{tag}",
        "kubernetes": f"kubernetes://{KUBE_NAMESPACE}/cli-{tag}",
    }[kind]


@pytest.fixture(params=["file", "s3", "secretsmanager", "kubernetes"])
def kind_env(request):
    """(store kind, environment for the CLI): AWS variables for moto, SENTRY_KUBECONFIG for the
    fake Kubernetes API."""
    if request.param == "file":
        return request.param, {}
    if request.param == "kubernetes":
        return request.param, {"SENTRY_KUBECONFIG": request.getfixturevalue("kube_api").kubeconfig}
    return request.param, request.getfixturevalue("aws_env")


def store_of(url: str, env: dict[str, str]):
    """The store at ``url`` opened in this process as the CLI opens it with ``env`` (the AWS
    variables are already set here by the ``aws_env`` fixture)."""
    return open_store(url, kubeconfig=env.get("SENTRY_KUBECONFIG"))


def test_serve_on_each_store_kind_signs_a_csr_end_to_end(kind_env, tmp_path):
    kind, env = kind_env
    url = store_url(kind, tmp_path)
    ca = serve(tmp_path, "--trust-bundle-store", url, "--mode", "standalone", env=env)
    port = ca.port
    try:
        trust = tmp_path / "trust"
        r = run("bundle", "export", "--trust-bundle-store", url, "--out", str(trust), env=env)
        assert r.returncode == 0, r.stderr
        out = tmp_path / "out"
        r = run(
            "request",
            "--id",
            "myapp",
            "--namespace",
            "default",
            "--server",
            f"localhost:{port}",
            "--trust-anchors",
            str(trust / "ca.crt"),
            "--out",
            str(out),
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert "spiffe://public/ns/default/myapp" in r.stdout
        chain = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())
        assert chain[1] == x509.load_pem_x509_certificate((trust / "issuer.crt").read_bytes())
        r = run("inspect", "--trust-bundle-store", url, env=env)
        assert r.returncode == 0 and re.search(r"issuer\s+ok", r.stdout), r.stdout + r.stderr
    finally:
        ca.stop()


def test_bundle_init_then_refuses_a_second_init(kind_env, tmp_path):
    kind, env = kind_env
    url = store_url(kind, tmp_path)
    r = run("bundle", "init", "--trust-bundle-store", url, "--ca-key-algorithm", "ed25519", env=env)
    assert r.returncode == 0 and "created" in r.stdout, r.stderr
    r = run("bundle", "init", "--trust-bundle-store", url, env=env)
    assert r.returncode == 1 and "already holds" in r.stderr


def _pem_files(directory: Path, bundle, *, sec1: bool = False) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    items = bundle.to_items()
    if sec1:
        key = serialization.load_pem_private_key(items["issuer.key"], None)
        items["issuer.key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    paths = {}
    for name, data in items.items():
        paths[name] = directory / name
        paths[name].write_bytes(data)
    return paths


def _import_args(files: dict[str, Path], root_key: bool = False) -> list[str]:
    args = ["--root", str(files["ca.crt"]), "--issuer-cert", str(files["issuer.crt"])]
    args += ["--issuer-key", str(files["issuer.key"])]
    return args + (["--root-key", str(files["root.key"])] if root_key else [])


def test_bundle_import_verifies_keeps_trust_continuity_and_force_overrides(kind_env, tmp_path):
    kind, env = kind_env
    url = store_url(kind, tmp_path)
    first = _pem_files(tmp_path / "first", make_bundle(), sec1=True)
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(first), env=env)
    assert r.returncode == 0, r.stderr
    store = store_of(url, env)
    before = store.load()
    assert before.items["ca.crt"] == first["ca.crt"].read_bytes() and "root.key" not in before.items
    assert before.items["issuer.key"].startswith(b"-----BEGIN PRIVATE KEY")  # normalised to PKCS#8

    # A key that does not match the issuer: refused before anything is written.
    other = _pem_files(tmp_path / "other", make_bundle())
    bad = dict(first) | {"issuer.key": other["issuer.key"]}
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(bad), env=env)
    assert r.returncode == 1 and "does not match" in r.stderr and "--issuer-key" in r.stderr
    # A different CA would drop the active root: refused without --force.
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(other, root_key=True), env=env)
    assert r.returncode == 1 and "active root" in r.stderr
    assert store.load() == before
    r = run(
        "bundle",
        "import",
        "--trust-bundle-store",
        url,
        *_import_args(other, root_key=True),
        "--force",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert store.load().items["ca.crt"] == other["ca.crt"].read_bytes() and "root.key" in store.load().items


def test_bundle_import_from_refuses_an_unrelated_bundle_claiming_the_current_root_was_removed(tmp_path):
    from adapters.stores import FileBundleStore

    from support.pki import CRAFTED_CLAIMS, crafted_items

    store_dir = tmp_path / "store"
    ours = make_bundle()
    write_bundle(store_dir, ours)
    before = snapshot(store_dir)
    for n, (reason, active_since) in enumerate(CRAFTED_CLAIMS):
        exported = tmp_path / f"crafted-{n}"
        assert FileBundleStore(exported).create(crafted_items(ours, datetime.now(UTC), reason, active_since))
        r = run("bundle", "import", "--trust-bundle-store", f"file://{store_dir}", "--from", str(exported))
        assert r.returncode == 1 and "active root" in r.stderr, (reason, r.stderr)
        assert f"--from {exported}" in r.stderr and "Add the current root to --root" not in r.stderr
        assert snapshot(store_dir) == before


def test_bundle_import_refuses_an_unreadable_current_bundle_and_keeps_a_staying_root_key(tmp_path):
    store_dir = tmp_path / "store"
    url = f"file://{store_dir}"
    ours = make_bundle()
    files = _pem_files(tmp_path / "ours", ours)
    # An unreadable current bundle: continuity cannot be checked, so nothing changes without --force.
    write_bundle(store_dir, ours)
    (store_dir / "ca.crt").write_bytes(b"not a certificate")
    damaged = snapshot(store_dir)
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(files))
    assert r.returncode == 1 and "cannot be read" in r.stderr and "--force" in r.stderr
    assert snapshot(store_dir) == damaged
    # root.key is kept when its anchor stays in the imported bundle (imported without --root-key).
    store_dir = tmp_path / "intact"
    url = f"file://{store_dir}"
    write_bundle(store_dir, ours)
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(files))
    assert r.returncode == 0, r.stderr
    assert (store_dir / "root.key").read_bytes() == ours.to_items()["root.key"]
    # ... and dropped with its anchor (a forced import of another CA without --root-key).
    other = _pem_files(tmp_path / "other", make_bundle())
    r = run("bundle", "import", "--trust-bundle-store", url, *_import_args(other), "--force")
    assert r.returncode == 0, r.stderr
    assert "root.key" not in open_store(url).load().items


def test_bundle_regenerate_keeps_a_backup_in_another_store(kind_env, tmp_path):
    kind, env = kind_env
    url, backup = store_url(kind, tmp_path), store_url(kind, tmp_path)
    assert run("bundle", "init", "--trust-bundle-store", url, env=env).returncode == 0
    old = store_of(url, env).load()
    r = run("bundle", "regenerate", "--trust-bundle-store", url, "--backup-to", backup, env=env)
    assert r.returncode == 0, r.stderr
    assert dict(store_of(backup, env).load().items) == dict(old.items)
    assert store_of(url, env).load().items["ca.crt"] != old.items["ca.crt"]
    # The backup store is not empty any more: a second regenerate is refused, nothing changes.
    current = store_of(url, env).load()
    r = run("bundle", "regenerate", "--trust-bundle-store", url, "--backup-to", backup, env=env)
    assert r.returncode == 1 and "not empty" in r.stderr
    assert store_of(url, env).load() == current


def test_regenerate_replaces_a_damaged_file_store_only_when_asked(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle())
    (creds / "issuer.key").unlink()
    damaged = snapshot(creds)
    r = run(
        "serve",
        "--issuer-credentials",
        str(creds),
        *EPHEMERAL_PORTS,
    )
    assert r.returncode == 1 and "refusing to start" in r.stderr and snapshot(creds) == damaged
    r = run(
        "bundle",
        "regenerate",
        "--issuer-credentials",
        str(creds),
        "--backup-to",
        f"file://{tmp_path / 'bak'}",
    )
    assert r.returncode == 0, r.stderr
    assert snapshot(tmp_path / "bak") == damaged
    assert open_store(f"file://{creds}").load().items.keys() >= {"ca.crt", "issuer.crt", "issuer.key"}


def test_export_refuses_a_non_empty_directory_and_an_empty_store(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle())
    out = tmp_path / "out"
    assert run("bundle", "export", "--issuer-credentials", str(creds), "--out", str(out)).returncode == 0
    assert (out / "issuer.key").stat().st_mode & 0o077 == 0 and snapshot(out) == snapshot(creds)
    r = run("bundle", "export", "--issuer-credentials", str(creds), "--out", str(out))
    assert r.returncode == 1 and "already holds" in r.stderr
    r = run("bundle", "export", "--issuer-credentials", str(tmp_path / "none"), "--out", str(tmp_path / "o2"))
    assert r.returncode == 1 and "empty" in r.stderr


def test_serve_exits_with_a_clear_message_when_the_store_is_unreachable(aws_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = aws_env | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_MAX_ATTEMPTS": "1"}
    url = f"s3://{TEST_BUCKET}/unreachable.json"
    r = run(
        "serve",
        "--trust-bundle-store",
        url,
        *EPHEMERAL_PORTS,
        env=env,
    )
    assert r.returncode == 1 and "gave up after 5 attempts" in r.stderr and "Traceback" not in r.stderr
    assert "generat" not in r.stderr.lower()
