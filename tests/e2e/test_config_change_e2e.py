"""Config change end to end: a running CA on an S3 store (moto, server mode) polling its store;
a client signing in a loop throughout. A new valid bundle put + the S3 event replayed through the
config-change handler → the CA serves the new issuer with zero failed calls, and nothing is
deployed. One that drops the current root → the handler puts the accepted bundle back; a corrupt
one → rejected; the CA keeps serving throughout, and a CA started afterwards serves the accepted
bundle."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import grpc
import pytest
from cryptography import x509

import sentryca_client as client
from adapters.stores.s3 import S3BundleStore
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2
from tools.local_invoke import invoke

from support import REPO_ROOT
from support.aws import BUCKET, FUNCTION_ENV
from support.ca import ca_config
from support.pki import make_bundle, make_csr, reissued
from support.wait import wait_until

DEADLINE = 60.0  # generous: the poll interval is 1 s


def refused(ca: CertificateAuthority) -> float:
    return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0


class SigningLoop(threading.Thread):
    """Signs continuously over one channel; records each served issuer and every failure."""

    def __init__(self, chan: grpc.Channel) -> None:
        super().__init__(daemon=True)
        self.chan, self.stop, self.failures, self.calls = chan, threading.Event(), [], 0
        self.last_issuer: bytes | None = None

    def run(self) -> None:
        csr = make_csr()
        while not self.stop.is_set():
            try:
                resp = client.sign(
                    self.chan,
                    csr,
                    "orders",
                    "default",
                    token_validator=sentry_pb2.SignCertificateRequest.INSECURE,
                    timeout=10,
                )
                chain = x509.load_pem_x509_certificates(resp.workload_certificate)
                self.last_issuer = chain[1].fingerprint(chain[1].signature_hash_algorithm)
                self.calls += 1
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")


@pytest.mark.slow
def test_config_change_restarts_in_place_without_failed_calls(bucket, tmp_path, monkeypatch, capsys):
    key = f"e2e/{tmp_path.name}/bundle.json"
    s3 = bucket
    now = datetime.now(UTC)
    store = S3BundleStore(BUCKET, key)
    first = make_bundle(now)
    assert store.create(first.to_items())
    for k, v in {
        **FUNCTION_ENV["ConfigChangeFunction"],
        "SENTRY_TRUST_BUNDLE_STORE": f"s3://{BUCKET}/{key}",
    }.items():
        monkeypatch.setenv(k, v)
    # ECS stays configured: a bundle change must never force a deployment (design §9.6); moto has
    # no such cluster here, so an UpdateService call would fail the invocation.

    def s3_event() -> dict:
        ev = json.loads((REPO_ROOT / "events" / "s3_eventbridge.json").read_text())
        ev["detail"]["object"]["key"] = key
        return ev

    ca = CertificateAuthority()
    ca.start(
        ca_config(
            tmp_path / "unused",
            trust_bundle_store=f"s3://{BUCKET}/{key}",
            store_poll_interval="1s",
            trust_domain="localhost",
        )
    )
    chan = client.channel(f"localhost:{ca.grpc_port}", first.anchors_pem)
    loop = SigningLoop(chan)
    loop.start()
    try:
        wait_until(lambda: loop.calls > 0, "first signature", timeout=DEADLINE)

        def fingerprint(bundle):
            return bundle.issuer.fingerprint(bundle.issuer.signature_hash_algorithm)

        assert loop.last_issuer == fingerprint(first)

        # 1. A valid new issuer under the same root: accepted, served in place.
        second = reissued(first, now)
        assert store.replace(second.to_items(), store.load().version)
        assert (
            invoke("ConfigChangeFunction", s3_event(), REPO_ROOT / "template.yaml")["outcome"] == "accepted"
        )
        wait_until(
            lambda: loop.last_issuer == fingerprint(second), "the new issuer is served", timeout=DEADLINE
        )

        # 2. A bundle that drops the current root: put back to the accepted one (the CA's poll,
        # should it see the refused version first, refuses it too).
        assert store.replace(make_bundle(now).to_items(), store.load().version)
        result = invoke("ConfigChangeFunction", s3_event(), REPO_ROOT / "template.yaml")
        assert result["outcome"] == "reverted" and "active root" in result["reason"]
        assert dict(store.load().items) == second.to_items()
        again = invoke("ConfigChangeFunction", s3_event(), REPO_ROOT / "template.yaml")
        assert again["outcome"] == "accepted"  # the revert's own event
        calls = loop.calls
        wait_until(lambda: loop.calls > calls + 5, "signing continues", timeout=DEADLINE)
        assert loop.last_issuer == fingerprint(second)
        wait_until(lambda: not ca.readiness()[1].get("degraded"), "the store backs the CA", timeout=DEADLINE)

        # 3. A corrupt bundle: rejected; the CA's poll refuses it too and keeps serving.
        refused_before = refused(ca)
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{not json")
        assert (
            invoke("ConfigChangeFunction", s3_event(), REPO_ROOT / "template.yaml")["outcome"] == "rejected"
        )
        wait_until(
            lambda: refused(ca) > refused_before, "the CA refuses the corrupt bundle", timeout=DEADLINE
        )
        calls = loop.calls
        wait_until(lambda: loop.calls > calls + 5, "signing continues", timeout=DEADLINE)
        assert loop.last_issuer == fingerprint(second)
    finally:
        loop.stop.set()
        loop.join(timeout=15)
        chan.close()
        ca.stop(grace=0)
    assert loop.failures == []
    assert loop.calls > 10


def test_store_poll_on_a_file_store_refuses_a_root_drop_then_applies_a_valid_bundle(tmp_path):
    from adapters.stores import FileBundleStore

    store_dir = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, store_poll_interval="1s"))
    try:
        store = FileBundleStore(store_dir)
        first = ca.signer.bundle
        dropped = make_bundle(datetime.now(UTC))
        assert store.replace(dropped.to_items(), store.load().version)
        wait_until(lambda: refused(ca) == 1, "the root-dropping bundle is refused", timeout=DEADLINE)
        assert ca.signer.bundle is first
        second = reissued(first, datetime.now(UTC))
        assert store.replace(second.to_items(), store.load().version)
        wait_until(
            lambda: ca.signer.bundle.issuer == second.issuer, "the valid bundle is applied", timeout=DEADLINE
        )
        assert refused(ca) == 1
    finally:
        ca.stop(grace=0)
