"""Zero-downtime restart (design §8, issue 6 item 3): 50 in-place restarts while 32 clients sign
over TLS against a real server on loopback. No call fails, and every certificate issued wholly
between two restarts carries the settings of the restart before it. A restart that moves the gRPC
port opens the new one first and lets the old one finish its calls in flight."""

import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509

import sentryca_client as client
from ca_core.config import load_config
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.jwks_server import JwksServer, SigningKey, claims, jwks
from support.pki import make_csr
from support.wait import wait_until

CLIENTS = 32
CHANNELS = 8
RESTARTS = 50
TTLS = ("2h", "3h")  # alternated: restart i applies TTLS[i % 2]
SKEW = timedelta(minutes=15)  # NotBefore is backdated by the default clock skew
AUD = "spiffe://localhost/ns/default/dapr-sentry"  # the test CA's identity, a JWT's audience


def leaf_ttl(response) -> timedelta:
    leaf = x509.load_pem_x509_certificates(response.workload_certificate)[0]
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc - SKEW


def test_fifty_restarts_under_load_fail_no_call_and_apply_each_setting(store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, rate_limit="0", workload_cert_ttl="1h"))
    port = ca.grpc_port
    anchors = (store_dir / "ca.crt").read_bytes()
    channels = [client.channel(f"localhost:{port}", anchors) for _ in range(CHANNELS)]
    csrs = [make_csr() for _ in range(CLIENTS)]
    stop = threading.Event()
    lock = threading.Lock()
    calls: list[tuple[float, float, timedelta]] = []  # (start, end, leaf TTL), time.monotonic()
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        stub = sentry_pb2_grpc.CAStub(channels[i % CHANNELS])
        request = sentry_pb2.SignCertificateRequest(
            id=f"app-{i}", namespace="prod", certificate_signing_request=csrs[i]
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = stub.SignCertificate(request, timeout=30)
            except Exception as e:  # noqa: BLE001 - every failure is collected and asserted on
                with lock:
                    failures.append(e)
                continue
            ended = time.monotonic()
            with lock:
                calls.append((started, ended, leaf_ttl(response)))

    def wait_for_calls(count: int) -> None:
        def reached():
            with lock:
                return len(calls) >= count or failures

        wait_until(reached, f"{count} calls (or a failure)", timeout=30)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    windows: list[tuple[float, timedelta]] = []  # (restart returned at, TTL in force from then)
    restart_began: list[float] = []
    try:
        wait_for_calls(CLIENTS)
        own_stub = sentry_pb2_grpc.CAStub(channels[0])
        for i in range(RESTARTS):
            ttl = TTLS[i % 2]
            restart_began.append(time.monotonic())
            ca.restart(ca_config(store_dir, rate_limit="0", workload_cert_ttl=ttl))
            windows.append((time.monotonic(), timedelta(hours=int(ttl[:-1]))))
            assert ca.grpc_port == port
            # a certificate requested after this restart carries its TTL
            mine = own_stub.SignCertificate(
                sentry_pb2.SignCertificateRequest(
                    id="probe", namespace="prod", certificate_signing_request=csrs[0]
                ),
                timeout=30,
            )
            assert leaf_ttl(mine) == windows[-1][1], f"restart {i}"
            with lock:
                seen = len(calls)
            wait_for_calls(seen + CLIENTS)  # the clients keep signing between restarts
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for chan in channels:
            chan.close()
        ca.stop(grace=0)

    assert failures == []
    assert len(calls) >= RESTARTS * CLIENTS
    restart_began.append(float("inf"))
    checked = 0
    for (applied_at, ttl), next_began in zip(windows, restart_began[1:], strict=True):
        for started, ended, got in calls:
            if applied_at <= started and ended <= next_began:
                assert got == ttl
                checked += 1
    assert checked >= RESTARTS  # many calls fell wholly between two restarts


# --- a restart that moves the gRPC port (design §8): the new listener first, then the old drains ---------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jwks_config(tmp_path, server: JwksServer, path: str, **flags: str):
    """A test CA's Config whose only validator is JWKS from ``path`` of ``server``."""
    f = tmp_path / f"config{path.replace('/', '-')}.yaml"
    f.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n"
        f"      - name: jwks\n        options:\n          source: {server.url_for(path)}\n"
        f"          caCertificate: {server.ca_pem}\n          minRefreshInterval: 1ms\n"
        "          requestTimeout: 60s\n"
    )
    flags = {
        "issuer_credentials": str(tmp_path / "credentials"),
        "port": "0",
        "healthz_port": "0",
        "metrics_port": "0",
        "mode": "standalone",
        "config": str(f),
    } | flags
    return load_config(flags, {}, lambda name: Path(name).read_text())


def _received(ca: CertificateAuthority) -> float:
    """``dapr_sentry_cert_sign_request_received_total`` of ``ca``."""
    return ca.metrics.registry.get_sample_value("dapr_sentry_cert_sign_request_received_total") or 0.0


def test_restart_to_a_new_port_serves_it_before_the_old_one_drains_its_calls(tmp_path):
    """Calls parked in the old server (their validator waits on a held JWKS fetch) complete after
    the restart; the new port serves while they are still in flight; then the old port closes."""
    key = SigningKey("k1", "ES256")
    jwks_server = JwksServer(tmp_path / "tls", jwks(key), paths=("/jwks.json", "/jwks-2.json")).start()
    store = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(_jwks_config(tmp_path, jwks_server, "/jwks.json"))
    old_port = ca.grpc_port
    anchors = (store / "ca.crt").read_bytes()
    token = key.token(claims("spiffe://public/ns/prod/orders", AUD))
    request = sentry_pb2.SignCertificateRequest(
        id="orders", namespace="prod", certificate_signing_request=make_csr(), token=token, token_validator=3
    )
    old_chan = client.channel(f"localhost:{old_port}", anchors)
    results: list = []
    try:
        wait_until(lambda: ca.readiness()[0], "the CA to be ready (JWKS keys held)", timeout=30)
        stub = sentry_pb2_grpc.CAStub(old_chan)
        assert stub.SignCertificate(request, timeout=30).workload_certificate  # the old port serves
        received = _received(ca)
        jwks_server.hold["/jwks.json"] = threading.Event()  # every key fetch of the old validator waits
        # Signed by a key not held yet: each call waits for the old validator's one fetch (held
        # keys would answer a known kid at once, design §6.3).
        rotated = SigningKey("k2", "ES256")
        jwks_server.document = jwks(key, rotated)
        parked = sentry_pb2.SignCertificateRequest()
        parked.CopyFrom(request)
        parked.token = rotated.token(claims("spiffe://public/ns/prod/orders", AUD))
        in_flight = [stub.SignCertificate.future(parked, timeout=60) for _ in range(4)]
        wait_until(lambda: _received(ca) == received + 4, "4 calls in the old server", timeout=30)
        wait_until(lambda: jwks_server.parked >= 1, "a call parked in its JWKS fetch", timeout=30)

        new_port = _free_port()
        ca.restart(_jwks_config(tmp_path, jwks_server, "/jwks-2.json", port=str(new_port)))
        assert ca.grpc_port == new_port
        # The new port serves while the old server still has its 4 calls in flight.
        with client.channel(f"localhost:{new_port}", anchors) as new_chan:
            response = sentry_pb2_grpc.CAStub(new_chan).SignCertificate(request, timeout=30)
        assert client.verify_response(response, anchors).spiffe_id.endswith("/orders")
        assert not any(f.done() for f in in_flight)

        jwks_server.hold["/jwks.json"].set()
        results = [f.result(timeout=60) for f in in_flight]  # raises for a failed call
        assert all(client.verify_response(r, anchors).spiffe_id.endswith("/orders") for r in results)
        wait_until(lambda: not ca.draining, "the old server to drain", timeout=30)
        with client.channel(f"localhost:{old_port}", anchors) as again, pytest.raises(grpc.RpcError) as e:
            sentry_pb2_grpc.CAStub(again).SignCertificate(request, timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE  # the old port is closed
    finally:
        for gate in jwks_server.hold.values():
            gate.set()
        old_chan.close()
        ca.stop(grace=0)
        jwks_server.stop()
    assert len(results) == 4
