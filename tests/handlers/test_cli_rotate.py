"""`sentryca rotate issuer|root|advance` run as an operator would, and a running CA that picks up
what they wrote (design §5, issue 6 item 5). Leaves are checked with OpenSSL and pyca/cryptography."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

import sentryca_client as client
from adapters.stores import FileBundleStore
from ca_core.bundle import certificates_pem, parse_bundle
from ca_core.certs import generate_issuer
from ca_core.keys import private_key_pem
from ca_core.rotation.codec import parse_state
from ca_core.spiffe_id import SpiffeId
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.cli import run_sentryca as run
from support.openssl import run_openssl
from support.pki import make_bundle, make_csr, make_key, verifies
from support.wait import wait_until

CA_ID = SpiffeId("localhost", "default", "dapr-sentry")


def loaded(store_dir: Path):
    stored = FileBundleStore(store_dir).load()
    bundle = parse_bundle(stored.items)
    return bundle, parse_state(stored.items, bundle)


def leaf_from(bundle, now=None) -> tuple[x509.Certificate, list[x509.Certificate]]:
    from ca_core.certs import sign_workload

    now = now or datetime.now(UTC)
    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, make_key().public_key(), "spiffe://public/ns/p/a", now
    )
    return leaf, list(bundle.issuer_chain)


def openssl_verifies(tmp_path: Path, leaf, chain, anchors_pem: bytes) -> bool:
    (tmp_path / "anchors.pem").write_bytes(anchors_pem)
    (tmp_path / "chain.pem").write_bytes(certificates_pem(chain))
    (tmp_path / "leaf.pem").write_bytes(certificates_pem([leaf]))
    r = run_openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "anchors.pem"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        str(tmp_path / "leaf.pem"),
    )
    return r.returncode == 0


def test_rotate_issuer_makes_a_new_issuer_active_and_old_leaves_still_verify(tmp_path):
    store = tmp_path / "store"
    assert run("bundle", "init", "--issuer-credentials", str(store)).returncode == 0
    before, _ = loaded(store)
    old_leaf = leaf_from(before)
    r = run("rotate", "issuer", "--issuer-credentials", str(store))
    assert r.returncode == 0, r.stderr
    assert "issuer rotation" in r.stdout and "event" not in r.stdout
    # a running CA does not sign with it before it loads the bundle: the output says when it does
    assert "is active now" not in r.stdout and "with --store-poll-interval, or after a restart" in r.stdout
    assert "rotation_step: issuer rotate (manual)" in r.stderr  # the audit record
    after, state = loaded(store)
    assert after.issuer != before.issuer and after.trust_anchors == before.trust_anchors
    assert after.issuer.issuer == before.trust_anchors[0].subject and state.issuer_since is not None
    now = datetime.now(UTC)
    for leaf, chain in (old_leaf, leaf_from(after)):
        assert verifies(leaf, chain, after.anchors_pem, now)
        assert openssl_verifies(tmp_path, leaf, chain, after.anchors_pem)
    r = run("inspect", "--issuer-credentials", str(store))
    assert r.returncode == 0 and f"serial {after.issuer.serial_number:x}" in r.stdout, r.stdout


def test_rotate_issuer_of_a_bundle_imported_without_its_root_key_takes_a_supplied_issuer(tmp_path):
    store = tmp_path / "store"
    ours = make_bundle(datetime.now(UTC))  # the operator's CA; the root key stays with the operator
    files = tmp_path / "operator"
    files.mkdir()
    for name, data in ours.to_items().items():
        (files / name).write_bytes(data)
    r = run(
        "bundle",
        "import",
        "--issuer-credentials",
        str(store),
        "--root",
        str(files / "ca.crt"),
        "--issuer-cert",
        str(files / "issuer.crt"),
        "--issuer-key",
        str(files / "issuer.key"),
    )
    assert r.returncode == 0, r.stderr
    before = FileBundleStore(store).load()
    r = run("rotate", "issuer", "--issuer-credentials", str(store))
    assert r.returncode == 1 and "--issuer-cert and --issuer-key" in r.stderr
    assert FileBundleStore(store).load() == before
    # The operator signs a new issuer with the offline root key ...
    key = make_key()
    issuer = generate_issuer(ours.trust_anchors[0], ours.root_key, key, CA_ID, datetime.now(UTC))
    (files / "new-issuer.crt").write_bytes(certificates_pem([issuer, ours.trust_anchors[0]]))  # root appended
    (files / "new-issuer.key").write_bytes(private_key_pem(key))
    # ... but a key that does not match is refused, and nothing changes.
    (files / "wrong.key").write_bytes(private_key_pem(make_key()))
    args = [
        "rotate",
        "issuer",
        "--issuer-credentials",
        str(store),
        "--issuer-cert",
        str(files / "new-issuer.crt"),
    ]
    r = run(*args, "--issuer-key", str(files / "wrong.key"))
    assert r.returncode == 1 and "does not match" in r.stderr
    assert FileBundleStore(store).load() == before
    r = run(*args, "--issuer-key", str(files / "new-issuer.key"))
    assert r.returncode == 0, r.stderr
    after, _ = loaded(store)
    assert after.issuer == issuer and after.issuer_chain == (issuer,) and after.root_key is None
    old_leaf = leaf_from(ours)
    assert verifies(*old_leaf, after.anchors_pem, datetime.now(UTC))
    assert openssl_verifies(tmp_path, *leaf_from(after), after.anchors_pem)


def test_rotate_root_prepares_then_advance_activates_and_emergency_replaces_everything(tmp_path):
    store = tmp_path / "store"
    assert run("bundle", "init", "--issuer-credentials", str(store)).returncode == 0
    first, _ = loaded(store)
    first_leaf = leaf_from(first)
    r = run("rotate", "root", "--issuer-credentials", str(store))  # default window: 24h
    assert r.returncode == 0, r.stderr
    prepared, state = loaded(store)
    assert len(prepared.trust_anchors) == 2 and prepared.issuer == first.issuer
    assert state.prepared_root.activate_after - state.prepared_root.since == timedelta(hours=24)
    r = run("rotate", "root", "--issuer-credentials", str(store))
    assert r.returncode == 1 and "already prepared" in r.stderr
    r = run("rotate", "advance", "--issuer-credentials", str(store))
    assert r.returncode == 0 and "no rotation step is due" in r.stdout
    when = state.prepared_root.activate_after.isoformat()
    assert (
        f"the activation of the prepared root {state.prepared_root.root.subject.rfc4514_string()}" in r.stdout
    )
    assert f"is due at {when}" in r.stdout, r.stdout
    r = run("inspect", "--issuer-credentials", str(store))
    assert "rotation: root    prepared" in r.stdout, r.stdout

    # Another rotation, with no window: advance activates it at once. `rotate root` ran with the
    # serving CA's 48h TTL, `advance` with the defaults (24h): the old root stays for the longer
    # bound recorded in the state, and without --store-poll-interval the expiry-check interval
    # (1h) bounds how long another CA may still sign with the old issuer.
    emergency_dir = tmp_path / "second"
    assert run("bundle", "init", "--issuer-credentials", str(emergency_dir)).returncode == 0
    second, _ = loaded(emergency_dir)
    env = {"SENTRY_ROOT_PROPAGATION_WINDOW": "0s", "SENTRY_WORKLOAD_CERT_TTL": "48h"}
    assert run("rotate", "root", "--issuer-credentials", str(emergency_dir), env=env).returncode == 0
    r = run("rotate", "advance", "--issuer-credentials", str(emergency_dir))
    assert r.returncode == 0 and "is now active" in r.stdout, r.stdout + r.stderr
    active, state = loaded(emergency_dir)
    assert active.issuer != second.issuer and active.anchor_for(active.issuer) != second.trust_anchors[0]
    assert [t.sha256 for t in state.retiring] and len(active.trust_anchors) == 2
    (retiring,) = state.retiring
    assert retiring.prune_after - retiring.since == timedelta(hours=48 + 1, minutes=15)
    now = datetime.now(UTC)
    second_leaf, new_leaf = leaf_from(second), leaf_from(active)
    for leaf, chain in (second_leaf, new_leaf):  # both verify against the anchors clients now get
        assert verifies(leaf, chain, active.anchors_pem, now)

    # Emergency on the first store: one new root, active at once; every earlier leaf is dead.
    r = run("rotate", "root", "--issuer-credentials", str(store), "--emergency")
    assert r.returncode == 0, r.stderr
    assert "EMERGENCY" in r.stdout and "fetch the new trust anchors" in r.stderr
    replaced, state = loaded(store)
    assert len(replaced.trust_anchors) == 1 and replaced.trust_anchors[0] not in prepared.trust_anchors
    assert {r.reason for r in state.removed} == {"emergency"} and len(state.removed) == 2
    assert not verifies(*first_leaf, replaced.anchors_pem, now)
    assert not openssl_verifies(tmp_path, *first_leaf, replaced.anchors_pem)
    assert openssl_verifies(tmp_path, *leaf_from(replaced), replaced.anchors_pem)


# --- a running CA picks up what the CLI wrote ------------------------------------------------------


class Signing(threading.Thread):
    """Signs over one TLS channel in a loop; records the issuer and anchors served, and failures."""

    def __init__(self, chan: grpc.Channel) -> None:
        super().__init__(daemon=True)
        self.chan, self.stop = chan, threading.Event()
        self.failures: list[str] = []
        self.calls = 0
        self.last: tuple[x509.Certificate, bytes] | None = None
        self.responses: list = []

    def run(self) -> None:
        csr = make_csr()
        while not self.stop.is_set():
            try:
                resp = client.sign(self.chan, csr, "orders", "prod", timeout=10)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")
                continue
            chain = x509.load_pem_x509_certificates(resp.workload_certificate)
            self.last = (chain[1], resp.trust_chain_certificates[0])
            self.responses.append(resp)
            self.calls += 1


def test_a_running_ca_picks_up_cli_rotations_without_a_failed_call(tmp_path):
    store = tmp_path / "store"
    ca = CertificateAuthority()
    ca.start(ca_config(store, store_poll_interval="1s"))
    chan, loop = None, None
    try:  # one finally stops the signing loop, closes the channel and stops the CA, whatever fails
        first = ca.signer.bundle
        chan = client.channel(f"localhost:{ca.grpc_port}", first.anchors_pem)
        loop = Signing(chan)
        loop.start()
        wait_until(lambda: loop.calls > 0, "a first signature")
        early = loop.responses[0]
        # 1. rotate issuer: the CA signs with the new issuer.
        assert run("rotate", "issuer", "--issuer-credentials", str(store)).returncode == 0
        second, _ = loaded(store)
        wait_until(lambda: loop.last[0] == second.issuer, "the new issuer is served")
        # 2. rotate root with no window, then advance: anchors first, then the new root's issuer.
        env = {"SENTRY_ROOT_PROPAGATION_WINDOW": "0s"}
        assert run("rotate", "root", "--issuer-credentials", str(store), env=env).returncode == 0
        prepared, _ = loaded(store)
        wait_until(lambda: loop.last[1] == prepared.anchors_pem, "both roots are served as anchors")
        assert loop.last[0] == second.issuer
        assert run("rotate", "advance", "--issuer-credentials", str(store)).returncode == 0
        third, _ = loaded(store)
        wait_until(lambda: loop.last[0] == third.issuer, "the new root's issuer is served")
        calls = loop.calls
        wait_until(lambda: loop.calls > calls + 5, "signing continues")
        loop.stop.set()
        loop.join(timeout=30)
        assert loop.failures == []
        now = datetime.now(UTC)
        for resp in (early, loop.responses[-1]):  # issued before and after: verify with today's anchors
            chain = x509.load_pem_x509_certificates(resp.workload_certificate)
            assert verifies(chain[0], chain[1:], third.anchors_pem, now)
        assert ca.metrics.registry.get_sample_value("dapr_sentry_issuercert_changed_total") == 2.0
        # 3. emergency: the running CA accepts it (its root is recorded as removed) and serves it.
        assert run("rotate", "root", "--issuer-credentials", str(store), "--emergency").returncode == 0
        fourth, _ = loaded(store)
        wait_until(
            lambda: ca.signer.bundle.trust_anchors == fourth.trust_anchors, "the emergency bundle is served"
        )
        assert (ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0) == 0
        with client.channel(f"localhost:{ca.grpc_port}", fourth.anchors_pem) as fresh:
            resp = client.sign(fresh, make_csr(), "orders", "prod")
        assert client.verify_response(resp, fourth.anchors_pem).spiffe_id.endswith("/orders")
        with (
            client.channel(f"localhost:{ca.grpc_port}", third.anchors_pem) as stale,
            pytest.raises(grpc.RpcError),
        ):
            client.sign(stale, make_csr(), "orders", "prod", timeout=5)  # old anchors: the CA is not trusted
    finally:
        if loop is not None:
            loop.stop.set()
            loop.join(timeout=30)
        if chan is not None:
            chan.close()
        ca.stop(grace=0)
