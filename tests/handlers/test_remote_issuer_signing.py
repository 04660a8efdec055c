"""A running CA whose issuer key is held elsewhere (a KMS key, design §5.18, §8.7), in process on
loopback: each signature runs in the gRPC server's I/O pool, never on its event loop, so the health
service answers while the key's service stalls; a signature not made within the signing timeout is
UNAVAILABLE (``kms_timeout``), and the next call signs once the service answers again. The key is a
:class:`~support.remote_key.ElsewhereKey` that can be held, handed to the CA through the KMS
adapter's per-process cache of opened keys (the adapter itself is tested against moto in
``tests/e2e/test_kms_issuer.py``)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sentryca_client as client
from adapters import kms
from ca_core.bundle import ISSUER_KEY, ISSUER_KEY_REF, generate_bundle
from ca_core.spiffe_id import SpiffeId
from handlers import grpc_service
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.pki import make_csr, write_bundle
from support.remote_key import ElsewhereKey

URI = "kms://arn:aws:kms:us-east-1:111122223333:key/held-issuer"


class HeldKey(ElsewhereKey):
    """Signs only while ``flowing`` is set (a stalled KMS otherwise); records the signing threads."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.flowing = threading.Event()
        self.flowing.set()
        self.threads: list[str] = []

    def sign(self, data, signature_algorithm):
        self.threads.append(threading.current_thread().name)
        self.flowing.wait(timeout=10)
        return super().sign(data, signature_algorithm)


@pytest.fixture
def held(tmp_path, monkeypatch):
    key = HeldKey(URI)
    bundle = generate_bundle(
        "localhost", SpiffeId("localhost", "default", "dapr-sentry"), datetime.now(UTC), issuer_key=key
    )
    items = bundle.to_items()
    assert ISSUER_KEY not in items and items[ISSUER_KEY_REF] == f"{URI}\n".encode()
    write_bundle(tmp_path / "credentials", bundle)
    monkeypatch.setitem(kms._opened, URI, key)  # what open_key hands out for this reference
    monkeypatch.setattr(grpc_service, "REMOTE_SIGN_TIMEOUT", 0.5)
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "credentials"))
    anchors = (tmp_path / "credentials" / "ca.crt").read_bytes()
    chan = client.channel(f"localhost:{ca.grpc_port}", anchors)
    try:
        yield key, chan
    finally:
        key.flowing.set()
        chan.close()
        ca.stop(grace=0)


def health(chan) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    return health_pb2_grpc.HealthStub(chan).Check(request, timeout=2).status


def test_signing_with_a_remote_issuer_key_runs_off_the_loop_and_times_out_as_unavailable(held):
    key, chan = held
    signed = client.sign(chan, make_csr(), "orders", "prod", timeout=10)
    assert signed.workload_certificate
    assert key.threads and key.threads[-1].startswith("grpc-io"), key.threads  # the I/O pool

    key.flowing.clear()  # the key's service stalls
    outcome: dict = {}

    def call() -> None:
        try:
            client.sign(chan, make_csr(), "stalled", "prod", timeout=10)
        except grpc.RpcError as e:
            outcome["error"] = (e.code(), e.details())

    caller = threading.Thread(target=call)
    caller.start()
    assert health(chan) == health_pb2.HealthCheckResponse.SERVING  # the loop is free
    caller.join(timeout=10)
    code, details = outcome["error"]
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"the issuer key {URI} did not sign within 0.5 s" in details

    key.flowing.set()  # it answers again: the next call signs
    assert client.sign(chan, make_csr(), "again", "prod", timeout=10).workload_certificate
