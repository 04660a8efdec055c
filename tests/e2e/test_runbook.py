"""docs/runbook.md, run as written (issue 6 item 7): every ``sh`` block of the runbook is marked
``<!-- runbook: NAME -->`` and executed here with bash against real stores (a directory, S3 in
moto) and real CAs on loopback; what the runbook promises is checked after each block."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

import sentryca_client as client
from adapters.stores import FileBundleStore, open_store
from ca_core.bundle import TrustBundle, parse_bundle
from ca_core.certs import generate_issuer, generate_root
from ca_core.errors import BundleError
from ca_core.keys import private_key_pem
from ca_core.rotation.codec import parse_state
from ca_core.spiffe_id import SpiffeId
from handlers.server import CertificateAuthority

from support import REPO_ROOT
from support.aws import TEST_BUCKET, aws_client
from support.ca import ca_config
from support.pki import bundle_with_issuer_window, make_bundle, make_csr, make_key, verifies
from support.wait import wait_for_line, wait_until

RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
BIN = str(Path(sys.executable).parent)
MARKER = re.compile(r"<!-- runbook: ([\w-]+) -->\n```sh\n(.*?)```", re.S)
# Every block of the runbook, and the tests below that run it.
BLOCKS = {
    "inspect": "test_rotation_by_hand_as_the_runbook_says",
    "backup": "test_backup_destroy_restore_keeps_existing_certificates_valid",
    "restore": "test_backup_destroy_restore_keeps_existing_certificates_valid",
    "restore-damaged": "test_restoring_a_backup_over_a_damaged_store_takes_force_and_running_cas_take_it",
    "serve-auto": "test_the_automatic_serve_command_serves",
    "rotate-issuer": "test_rotation_by_hand_as_the_runbook_says",
    "rotate-issuer-supplied": "test_an_operator_supplied_issuer_as_the_runbook_says",
    "rotate-root": "test_rotation_by_hand_as_the_runbook_says",
    "rotate-advance": "test_rotation_by_hand_as_the_runbook_says",
    "emergency": "test_emergency_rotation_and_its_consequences",
    "replace": "test_replacing_the_ca_running_cas_refuse_it_until_restarted",
    "refused": "test_a_bundle_written_around_the_cas_is_never_served_and_the_backup_restores_it",
    "expired-issuer": "test_recovery_from_an_expired_issuer",
    "expired-root": "test_recovery_from_an_expired_root",
    "workload-renew": "test_recovery_from_an_expired_root",
    "rotate-jwt-key": "test_rotating_the_jwt_key_as_the_runbook_says",
}


def blocks() -> dict[str, str]:
    return dict(MARKER.findall(RUNBOOK.read_text()))


def sh(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the runbook's block ``name`` with bash (-euo pipefail) in ``cwd``; it must succeed."""
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", blocks()[name]],
        cwd=cwd,
        env=os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"} | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"runbook block {name!r} failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_every_sh_block_of_the_runbook_is_marked_and_run_by_a_test():
    text = RUNBOOK.read_text()
    assert text.count("```sh\n") == len(blocks()) == len(BLOCKS)
    assert set(blocks()) == set(BLOCKS)
    assert set(BLOCKS.values()) <= set(globals())
    assert "runbook.md" in (REPO_ROOT / "README.md").read_text()


def sign(ca: CertificateAuthority, anchors: bytes):
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        return client.sign(chan, make_csr(), "orders", "prod")


def leaf_and_chain(response) -> tuple[x509.Certificate, list[x509.Certificate]]:
    chain = x509.load_pem_x509_certificates(response.workload_certificate)
    return chain[0], chain[1:]


# --- backup and restore ------------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store_env(request, tmp_path):
    """(store URL, environment for the CLI) for a fresh store of each kind."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}", {}
    env = request.getfixturevalue("aws_env")
    return f"s3://{TEST_BUCKET}/runbook/{uuid.uuid4().hex[:10]}.json", env


def destroy(url: str, env: dict[str, str]) -> None:
    if url.startswith("file://"):
        shutil.rmtree(url[len("file://") :])
        return
    s3 = aws_client("s3", env["AWS_ENDPOINT_URL"])
    key = url.split("/", 3)[3]
    for k in (key, f"{key}.public"):
        s3.delete_object(Bucket=TEST_BUCKET, Key=k)


def test_backup_destroy_restore_keeps_existing_certificates_valid(store_env, tmp_path):
    url, env = store_env
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "unused", trust_bundle_store=url))
    anchors = ca.signer.bundle.anchors_pem
    issued = [sign(ca, anchors) for _ in range(2)]
    ca.stop(grace=0)
    # a root rotation under way: the backup must carry its keys (rotation.json) too
    sh("rotate-root", tmp_path, STORE=url, **env)
    backup = tmp_path / "backup"
    sh("backup", tmp_path, STORE=url, BACKUP=str(backup), **env)
    exported = FileBundleStore(backup).load()
    assert {"ca.crt", "issuer.crt", "issuer.key", "root.key", "rotation.json"} == set(exported.items)

    destroy(url, env)
    store = open_store(url)
    assert store.load() is None
    # What the CA says now, instead of generating a new root: the command the runbook gives. A
    # versioned bucket keeps a delete marker; a deleted directory keeps nothing, so a CA that
    # must never start anew runs with --bootstrap-policy never (as the runbook says).
    flags = {"trust_bundle_store": url} | ({"bootstrap_policy": "never"} if url.startswith("file:") else {})
    with pytest.raises(BundleError) as refused:
        CertificateAuthority().start(ca_config(tmp_path / "unused", **flags))
    assert f"sentryca bundle import --trust-bundle-store {store.description} --from DIR" in str(refused.value)
    assert "sentryca bundle import --trust-bundle-store" in blocks()["restore"]
    assert store.load() is None  # nothing written

    r = sh("restore", tmp_path, STORE=url, BACKUP=str(backup), **env)
    assert "bundle: complete" in r.stdout and "rotation: root    prepared" in r.stdout
    restored = store.load()
    assert dict(restored.items) == dict(exported.items)
    bundle = parse_bundle(restored.items)
    assert parse_state(restored.items, bundle).prepared_root is not None
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "unused", trust_bundle_store=url))
    try:
        now = datetime.now(UTC)
        assert bundle.trust_anchors[0] == x509.load_pem_x509_certificates(anchors)[0]
        for response in issued:  # the workloads' existing certificates still verify
            assert verifies(*leaf_and_chain(response), bundle.anchors_pem, now)
            assert verifies(*leaf_and_chain(response), anchors, now)  # and with the anchors they hold
        fresh = sign(ca, anchors)  # the restored CA serves, trusted with the anchors workloads hold
        assert client.verify_response(fresh, anchors).spiffe_id.endswith("/orders")
    finally:
        ca.stop(grace=0)


def test_a_restore_over_another_ca_is_refused_without_force(tmp_path):
    """The runbook's warning: a store holding another bundle keeps it unless --force."""
    backup = tmp_path / "backup"
    assert FileBundleStore(backup).create(make_bundle(datetime.now(UTC)).to_items())
    store = tmp_path / "store"
    assert FileBundleStore(store).create(make_bundle(datetime.now(UTC)).to_items())
    before = FileBundleStore(store).load()
    r = subprocess.run(
        [
            f"{BIN}/sentryca",
            "bundle",
            "import",
            "--trust-bundle-store",
            f"file://{store}",
            "--from",
            str(backup),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "active root" in r.stderr
    assert FileBundleStore(store).load() == before


def refused(ca: CertificateAuthority) -> float:
    return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0


def damage(url: str) -> None:
    """Write the store's bundle without its issuer key (adapters never judge content)."""
    store = open_store(url)
    current = store.load()
    assert store.replace({k: v for k, v in current.items.items() if k != "issuer.key"}, current.version)


def test_restoring_a_backup_over_a_damaged_store_takes_force_and_running_cas_take_it(store_env, tmp_path):
    url, env = store_env
    config = ca_config(tmp_path / "unused", trust_bundle_store=url, store_poll_interval="1s")
    ca = CertificateAuthority()
    ca.start(config)
    try:
        anchors = ca.signer.bundle.anchors_pem
        backup = tmp_path / ".sentry" / "backups" / "before"
        sh("backup", tmp_path, STORE=url, BACKUP=str(backup), **env)
        damage(url)
        wait_until(lambda: refused(ca) >= 1, "the running CA refuses the damaged version")
        assert ca.readiness()[0]  # and goes on serving the bundle it had
        damaged = open_store(url).load()
        r = subprocess.run(
            [f"{BIN}/sentryca", "bundle", "import", "--trust-bundle-store", url, "--from", str(backup)],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | env,
        )
        assert r.returncode == 1 and "is damaged" in r.stderr and "--force" in r.stderr, r.stderr
        assert open_store(url).load() == damaged
        r = sh("restore-damaged", tmp_path, STORE=url, BACKUP=str(backup), **env)
        assert "Running CAs take this bundle at their next store poll" in r.stderr
        restored = open_store(url).load()
        assert dict(restored.items) == dict(FileBundleStore(backup).load().items)
        parse_bundle(restored.items)  # whole again
        ca.restart(config)  # the path a poll takes accepts it: it keeps the root the CA serves
        assert ca.signer.bundle.anchors_pem == anchors and ca.readiness()[0]
        assert client.verify_response(sign(ca, anchors), anchors).spiffe_id.endswith("/orders")
    finally:
        ca.stop(grace=0)


def test_replacing_the_ca_running_cas_refuse_it_until_restarted(store_env, tmp_path):
    url, env = store_env
    config = ca_config(tmp_path / "unused", trust_bundle_store=url, store_poll_interval="1s")
    ca = CertificateAuthority()
    ca.start(config)
    try:
        old_anchors = ca.signer.bundle.anchors_pem
        r = sh("replace", tmp_path, STORE=url, **env)
        assert "Running CAs do NOT take this bundle by themselves" in r.stderr
        assert "restart every CA process" in r.stderr and 'docs/runbook.md, "Replace the CA"' in r.stderr
        (backup,) = (tmp_path / ".sentry" / "backups").iterdir()
        assert f"private keys included, is in file://{backup}" in r.stdout
        new_anchors = (tmp_path / "trust-new" / "ca.crt").read_bytes()
        assert new_anchors != old_anchors and new_anchors == open_store(url).load().items["ca.crt"]
        # What the runbook says a running CA does: the poll refuses, the old bundle stays in force,
        wait_until(lambda: refused(ca) >= 1, "the polling CA refuses the new bundle")
        assert ca.signer.bundle.anchors_pem == old_anchors and ca.readiness()[0]
        # an in-place restart refuses too,
        with pytest.raises(BundleError, match="does not include the active root"):
            ca.restart(config)
        assert ca.signer.bundle.anchors_pem == old_anchors
    finally:
        ca.stop(grace=0)
    # and a CA process started again serves the new bundle, trusted with the anchors handed out.
    ca = CertificateAuthority()
    ca.start(config)
    try:
        assert ca.signer.bundle.anchors_pem == new_anchors
        sh("workload-renew", tmp_path, CA=f"localhost:{ca.grpc_port}")
        chain = x509.load_pem_x509_certificates((tmp_path / "certs" / "tls.crt").read_bytes())
        assert verifies(chain[0], chain[1:], new_anchors, datetime.now(UTC))
    finally:
        ca.stop(grace=0)


def test_a_bundle_written_around_the_cas_is_never_served_and_the_backup_restores_it(store_env, tmp_path):
    url, env = store_env
    config = ca_config(tmp_path / "unused", trust_bundle_store=url, store_poll_interval="1s")
    ca = CertificateAuthority()
    ca.start(config)
    try:
        anchors = ca.signer.bundle.anchors_pem
        backup = tmp_path / ".sentry" / "backups" / "before"
        sh("backup", tmp_path, STORE=url, BACKUP=str(backup), **env)
        store = open_store(url)
        assert store.replace(make_bundle().to_items(), store.load().version)  # another root
        wait_until(lambda: refused(ca) >= 1, "the running CA refuses it")
        # What the runbook says a CA that starts now does:
        fresh = CertificateAuthority()
        if url.startswith("s3://"):  # serves the accepted version the bucket keeps, degraded
            fresh.start(config)
            try:
                assert fresh.signer.bundle.anchors_pem == anchors
                assert fresh.readiness()[1]["degraded"]["problem"] == "bundle_refused"
            finally:
                fresh.stop(grace=0)
        else:  # a directory keeps no earlier version: the start is refused, nothing written
            with pytest.raises(BundleError, match="keeps no copy of the last accepted one"):
                fresh.start(config)
        r = sh("refused", tmp_path, STORE=url, BACKUP=str(backup), **env)
        assert "newest: the store's newest bundle is not its record of the last accepted one; REFUSED" in (
            r.stdout
        )
        assert "Running CAs take this bundle at their next store poll" in r.stderr
        assert dict(open_store(url).load().items) == dict(FileBundleStore(backup).load().items)
        wait_until(lambda: not ca.readiness()[1].get("degraded"), "the running CA is backed again")
        assert client.verify_response(sign(ca, anchors), anchors).spiffe_id.endswith("/orders")
    finally:
        ca.stop(grace=0)
    ca = CertificateAuthority()
    ca.start(config)
    try:
        assert ca.signer.bundle.anchors_pem == anchors and not ca.readiness()[1].get("degraded")
    finally:
        ca.stop(grace=0)


# --- rotation -----------------------------------------------------------------------------------


def test_the_automatic_serve_command_serves(tmp_path):
    env = {
        "SENTRY_PORT": "0",
        "SENTRY_HEALTHZ_PORT": "0",
        "SENTRY_METRICS_PORT": "0",
        "SENTRY_MODE": "standalone",
    }
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", blocks()["serve-auto"]],
        cwd=tmp_path,
        env=os.environ
        | {"PATH": f"{BIN}:{os.environ['PATH']}", "STORE": f"file://{tmp_path / 'store'}"}
        | env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        wait_for_line(
            proc.stderr, lambda line: "serving on" in line, "the CA says where it serves", seen=lines
        )
        assert "serving on 127.0.0.1:" in lines[-1], "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_rotating_the_jwt_key_as_the_runbook_says(tmp_path):
    from ca_core.jwt_svid import JwtAlgorithm, key_ids

    url = f"file://{tmp_path / 'store'}"
    first = make_bundle(datetime.now(UTC), jwt=JwtAlgorithm.ES256)
    assert FileBundleStore(tmp_path / "store").create(first.to_items())
    r = sh("rotate-jwt-key", tmp_path, STORE=url)
    rotated, state = _loaded(tmp_path / "store")
    new_kid = state.prepared_jwt.kid
    assert key_ids(rotated.jwks) == (*key_ids(first.jwks), new_kid)
    assert rotated.jwt_key.private_numbers() == first.jwt_key.private_numbers()  # still signs
    assert f"jwks   key kid {new_kid}  ES256 EC  prepared since " in r.stdout
    assert f"rotation: jwt     prepared  kid {new_kid} (ES256)" in r.stdout


def test_rotation_by_hand_as_the_runbook_says(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    first = make_bundle(datetime.now(UTC))
    assert FileBundleStore(tmp_path / "store").create(first.to_items())
    old_leaf = _leaf(first)
    assert "bundle: complete" in sh("inspect", tmp_path, STORE=url).stdout

    sh("rotate-issuer", tmp_path, STORE=url)
    second, _ = _loaded(tmp_path / "store")
    assert second.issuer != first.issuer and second.trust_anchors == first.trust_anchors

    r = sh("rotate-root", tmp_path, STORE=url, SENTRY_ROOT_PROPAGATION_WINDOW="0s")
    assert "rotation: root    prepared" in r.stdout and "activates at" in r.stdout
    prepared, _ = _loaded(tmp_path / "store")
    assert len(prepared.trust_anchors) == 2 and prepared.issuer == second.issuer

    r = sh("rotate-advance", tmp_path, STORE=url)
    assert "is now active" in r.stdout
    third, state = _loaded(tmp_path / "store")
    assert third.anchor_for(third.issuer) == prepared.trust_anchors[1]
    assert [t.sha256 for t in state.retiring]
    now = datetime.now(UTC)
    for leaf in (old_leaf, _leaf(second), _leaf(third)):
        assert verifies(*leaf, third.anchors_pem, now)


def test_an_operator_supplied_issuer_as_the_runbook_says(tmp_path):
    """The bundle was imported without its root key; the operator signs an issuer with OpenSSL,
    with the active root kept offline, while the store holds a second trust anchor."""
    ours = make_bundle(datetime.now(UTC))
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "my-root.pem").write_bytes(ours.anchors_pem)
    (offline / "my-root.key").write_bytes(private_key_pem(ours.root_key))
    other = make_bundle(datetime.now(UTC)).trust_anchors[0]  # listed first: OpenSSL would sign with it
    keyless = TrustBundle((other, *ours.trust_anchors), ours.issuer_chain, ours.issuer_key, None)
    assert FileBundleStore(tmp_path / "store").create(keyless.to_items())
    old_leaf = _leaf(ours)
    sh(
        "rotate-issuer-supplied",
        tmp_path,
        STORE=f"file://{tmp_path / 'store'}",
        ROOT_CERT=str(offline / "my-root.pem"),
        ROOT_KEY=str(offline / "my-root.key"),
    )
    after, _ = _loaded(tmp_path / "store")
    assert after.issuer == x509.load_pem_x509_certificate((tmp_path / "new-issuer.crt").read_bytes())
    assert after.root_key is None
    now = datetime.now(UTC)
    assert verifies(*old_leaf, after.anchors_pem, now)
    assert verifies(*_leaf(after), after.anchors_pem, now)


def test_emergency_rotation_and_its_consequences(tmp_path):
    store = tmp_path / "store"
    ca = CertificateAuthority()
    ca.start(ca_config(store, store_poll_interval="1s"))
    try:
        old_anchors = ca.signer.bundle.anchors_pem
        before = sign(ca, old_anchors)
        r = sh("emergency", tmp_path, STORE=f"file://{store}")
        assert_only_public_anchors_handed_out(tmp_path, r.stdout)
        new_anchors = (tmp_path / "trust-new" / "ca.crt").read_bytes()
        assert (
            new_anchors == (store / "ca.crt").read_bytes()
            and len(x509.load_pem_x509_certificates(new_anchors)) == 1
        )
        wait_until(lambda: ca.signer.bundle.anchors_pem == new_anchors, "the CA applies the emergency bundle")
        now = datetime.now(UTC)
        assert not verifies(*leaf_and_chain(before), new_anchors, now)  # every earlier leaf is dead
        with pytest.raises(grpc.RpcError):  # workloads with the old anchors cannot reach the CA any more
            with client.channel(f"localhost:{ca.grpc_port}", old_anchors) as chan:
                client.sign(chan, make_csr(), "orders", "prod", timeout=5)
        sh("workload-renew", tmp_path, CA=f"localhost:{ca.grpc_port}")
        leaf = x509.load_pem_x509_certificates((tmp_path / "certs" / "tls.crt").read_bytes())
        assert verifies(leaf[0], leaf[1:], new_anchors, now)
    finally:
        ca.stop(grace=0)


# --- recovery -----------------------------------------------------------------------------------


def test_recovery_from_an_expired_issuer(tmp_path):
    now = datetime.now(UTC)
    store = tmp_path / "store"
    expired = bundle_with_issuer_window(now - timedelta(days=100), now - timedelta(days=1), now)
    assert FileBundleStore(store).create(expired.to_items())
    ca = CertificateAuthority()
    ca.start(ca_config(store, store_poll_interval="1s"))
    try:
        assert ca.readiness()[0] is False
        r = sh("expired-issuer", tmp_path, STORE=f"file://{store}")
        assert re.search(r"issuer\s+EXPIRED/INVALID", r.stdout) and "issuer rotation" in r.stdout
        wait_until(lambda: ca.readiness()[0], "the CA is ready again")
        response = sign(ca, expired.anchors_pem)  # with the anchors workloads already hold
        assert verifies(*leaf_and_chain(response), expired.anchors_pem, datetime.now(UTC))
    finally:
        ca.stop(grace=0)


def test_recovery_from_an_expired_root(tmp_path):
    now = datetime.now(UTC)
    root_key, issuer_key = make_key(), make_key()
    root = generate_root("localhost", root_key, now - timedelta(days=400))
    issuer = generate_issuer(
        root, root_key, issuer_key, SpiffeId("localhost", "default", "dapr-sentry"), now - timedelta(days=400)
    )
    store = tmp_path / "store"
    assert FileBundleStore(store).create(TrustBundle((root,), (issuer,), issuer_key, root_key).to_items())
    ca = CertificateAuthority()
    ca.start(ca_config(store, store_poll_interval="1s"))
    try:
        assert ca.grpc_port is None  # nothing can sign, not even the CA's own TLS certificate
        r = sh("expired-root", tmp_path, STORE=f"file://{store}")
        assert_only_public_anchors_handed_out(tmp_path, r.stdout)
        wait_until(lambda: ca.grpc_port is not None and ca.readiness()[0], "the CA serves again")
        sh("workload-renew", tmp_path, CA=f"localhost:{ca.grpc_port}")
        chain = x509.load_pem_x509_certificates((tmp_path / "certs" / "tls.crt").read_bytes())
        anchors = (tmp_path / "trust-new" / "ca.crt").read_bytes()
        assert verifies(chain[0], chain[1:], anchors, datetime.now(UTC))
        assert root not in x509.load_pem_x509_certificates(anchors)
    finally:
        ca.stop(grace=0)


def assert_only_public_anchors_handed_out(tmp_path: Path, output: str) -> None:
    """The directory handed out holds the public part only (0644, no key); the keys are in the
    new backup, a 0700 directory under the git-ignored .sentry/backups/ whose path was printed."""
    handed_out = tmp_path / "trust-new"
    assert sorted(p.name for p in handed_out.iterdir()) == ["ca.crt", "issuer.crt"]
    for p in handed_out.iterdir():
        assert b"PRIVATE KEY" not in p.read_bytes() and p.stat().st_mode & 0o777 == 0o644
    (backup,) = (tmp_path / ".sentry" / "backups").iterdir()
    assert backup.stat().st_mode & 0o777 == 0o700 and f"{backup} holds private keys" in output
    assert {"ca.crt", "issuer.key", "root.key"} <= {p.name for p in backup.iterdir()}
    assert (backup / "ca.crt").read_bytes() == (handed_out / "ca.crt").read_bytes()


def _loaded(directory: Path):
    stored = FileBundleStore(directory).load()
    bundle = parse_bundle(stored.items)
    return bundle, parse_state(stored.items, bundle)


def _leaf(bundle: TrustBundle) -> tuple[x509.Certificate, list[x509.Certificate]]:
    from ca_core.certs import sign_workload

    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, make_key().public_key(), "spiffe://public/ns/p/a", datetime.now(UTC)
    )
    return leaf, list(bundle.issuer_chain)
