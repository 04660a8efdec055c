"""Zero-downtime restart (SPEC §8, issue 6 item 3): 50 in-place restarts while 32 clients sign
over TLS against a real server on loopback. No call fails, and every certificate issued wholly
between two restarts carries the settings of the restart before it."""

import threading
import time
from datetime import timedelta

from conftest import ca_config, make_csr
from cryptography import x509

from handlers import client
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

CLIENTS = 32
CHANNELS = 8
RESTARTS = 50
TTLS = ("2h", "3h")  # alternated: restart i applies TTLS[i % 2]
SKEW = timedelta(minutes=15)  # NotBefore is backdated by the default clock skew


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
    progress = threading.Condition(lock)

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
            with progress:
                calls.append((started, ended, leaf_ttl(response)))
                progress.notify_all()

    def wait_for_calls(count: int) -> None:
        with progress:
            assert progress.wait_for(lambda: len(calls) >= count or failures, timeout=30)

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
