"""`sentryca serve --workers N`: N CA processes on one port under a supervisor (handlers.workers),
run for real: TLS handshakes, signed certificates, the supervisor's /healthz and /metrics, a
killed worker, a new bundle in the store, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

import sentryca_client as client
from adapters.stores import FileBundleStore
from ca_core.bundle import TrustBundle, parse_bundle

from support.cli import Served, run_sentryca, serve
from support.pki import bundle_with_issuer_window, make_csr, reissued, snapshot, write_bundle
from support.wait import wait_until

pytestmark = pytest.mark.slow


def server_certificate(port: int, anchors: bytes) -> x509.Certificate:
    """The TLS server certificate presented on one fresh connection to ``port``."""
    ctx = ssl.create_default_context(cadata=anchors.decode())
    ctx.check_hostname = False  # the CA's certificate names its SPIFFE ID; we only read it
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def sign_on_fresh_connections(ca: Served, n: int) -> list[x509.Certificate]:
    """``n`` signs, each on its own new channel (so the kernel picks a worker each time); the
    verified leaves."""
    leaves = []
    for i in range(n):
        channel = client.channel(f"localhost:{ca.port}", ca.anchors)
        try:
            response = client.sign(channel, make_csr(), f"app{i}", "default", timeout=20)
        finally:
            channel.close()
        leaves.append(client.verify_response(response, ca.anchors).leaf)
    return leaves


def worker_pids(ca: Served) -> list[int]:
    return [w["pid"] for w in ca.wait_ready()["workers"]]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{name} not in the exposition"
    return float(m.group(1))


@pytest.fixture
def two_workers(tmp_path):
    ca = serve(tmp_path, "--mode", "standalone", "--workers", "2", "--store-poll-interval", "200ms")
    yield ca
    ca.stop()


def test_two_workers_share_one_port_and_one_bundle(two_workers):
    ca = two_workers
    body = ca.wait_ready()
    assert [w["worker"] for w in body["workers"]] == [0, 1] and all(w["ready"] for w in body["workers"])
    pids = [w["pid"] for w in body["workers"]]
    assert len(set(pids)) == 2 and all(alive(p) for p in pids)
    # each worker issued its own TLS certificate: fresh connections land on both
    serials = {server_certificate(ca.port, ca.anchors).serial_number for _ in range(30)}
    assert len(serials) == 2
    leaves = sign_on_fresh_connections(ca, 12)
    assert len({leaf.issuer for leaf in leaves}) == 1  # one bundle behind both workers
    # the supervisor's metrics add up every worker's
    assert metric(ca.metrics(), "dapr_sentry_cert_sign_success_total") == 12
    assert metric(ca.metrics(), "dapr_sentry_cert_sign_request_received_total") == 12
    issuer = x509.load_pem_x509_certificate((ca.creds / "issuer.crt").read_bytes())
    assert (
        metric(ca.metrics(), "dapr_sentry_issuercert_expiry_timestamp")
        == issuer.not_valid_after_utc.timestamp()
    )


def ready_without(ca: Served, pid: int, seconds: float = 90) -> dict:
    """The supervisor's /healthz body once it is ready again with ``pid`` no longer a worker."""
    last: dict = {}

    def ready() -> bool:
        status, last["body"] = ca.healthz()
        return status == 200 and pid not in [w["pid"] for w in last["body"]["workers"]]

    wait_until(
        ready, lambda: f"ready without worker {pid} (last: {last['body']})", timeout=seconds, interval=0.2
    )
    return last["body"]


def test_a_killed_worker_is_started_again_and_the_others_keep_serving(two_workers):
    ca = two_workers
    first, second = worker_pids(ca)
    os.kill(first, signal.SIGKILL)
    body = ready_without(ca, first)
    assert second in [w["pid"] for w in body["workers"]] and body["worker_restarts"] == 1
    assert len(sign_on_fresh_connections(ca, 6)) == 6


def test_sigterm_stops_every_worker_and_closes_the_port(two_workers):
    ca = two_workers
    pids = worker_pids(ca)
    assert len(sign_on_fresh_connections(ca, 2)) == 2
    log = ca.stop()
    assert ca.proc.returncode == 0, log
    assert log.count("CA stopped") == 2
    assert not any(alive(p) for p in pids)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ca.port), timeout=2).close()


def test_every_worker_applies_a_new_bundle_from_the_store(two_workers):
    ca = two_workers
    store = FileBundleStore(ca.creds)
    stored = store.load()
    new = reissued(parse_bundle(stored.items), datetime.now(UTC), lifetime=timedelta(days=100))
    issuer = new.issuer
    assert store.replace(new.to_items(), stored.version)
    seen: list[str] = []

    def applied() -> bool:
        _, body = ca.healthz()
        seen[:] = [w.get("details", {}).get("issuer", "") for w in body["workers"]]
        return all(issuer.not_valid_after_utc.isoformat() in s for s in seen)

    wait_until(
        applied, lambda: f"every worker holds the new issuer (they hold: {seen})", timeout=60, interval=0.2
    )
    leaves = sign_on_fresh_connections(ca, 10)
    assert {leaf.issuer for leaf in leaves} == {issuer.subject}
    # every worker saw the change; it is counted once
    assert metric(ca.metrics(), "dapr_sentry_issuercert_changed_total") == 1


def test_a_bundle_the_workers_refuse_stops_the_start_with_the_reason(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "ca.crt").write_text("not a certificate\n")
    before = snapshot(creds)
    with pytest.raises(AssertionError, match=r"ca\.crt"):
        serve(tmp_path, "--mode", "standalone", "--workers", "2")
    assert snapshot(creds) == before


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), (None, None)],
)
def test_one_worker_per_cpu_respects_a_cgroup_quota(tmp_path, cpu_max, expected):
    from ca_core.config import load_config
    from handlers.workers import worker_count

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    cpus = len(os.sched_getaffinity(0))
    got = worker_count(load_config({"workers": "0"}, {}), str(path))
    assert got == (min(cpus, expected) if expected else cpus)
    assert worker_count(load_config({"workers": "3"}, {}), str(path)) == 3


def test_the_port_stays_this_cas_and_a_second_ca_cannot_share_it(two_workers, tmp_path):
    ca = two_workers
    for workers in ("2", "1"):
        other = tmp_path / f"other-{workers}"
        other.mkdir()
        with pytest.raises(AssertionError, match=rf"cannot listen on 127\.0\.0\.1:{ca.port}"):
            serve(other, "--mode", "standalone", "--workers", workers, "--port", str(ca.port))
    assert len(sign_on_fresh_connections(ca, 2)) == 2


def test_a_hung_worker_is_killed_and_started_again(two_workers):
    ca = two_workers
    first, second = worker_pids(ca)
    os.kill(first, signal.SIGSTOP)  # alive, but answers nothing
    try:
        body = ready_without(ca, first)
    finally:
        if alive(first):
            os.kill(first, signal.SIGKILL)
    assert second in [w["pid"] for w in body["workers"]] and body["worker_restarts"] == 1
    assert len(sign_on_fresh_connections(ca, 4)) == 4


def test_workers_start_with_an_expired_issuer_not_ready_until_it_is_rotated(tmp_path):
    now = datetime.now(UTC)
    creds = tmp_path / "creds"
    write_bundle(creds, bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now))
    ca = serve(tmp_path, "--mode", "standalone", "--workers", "2", "--store-poll-interval", "200ms")
    try:
        status, body = ca.healthz()
        assert status == 503 and len(body["workers"]) == 2
        assert all("expired" in json.dumps(w["details"]) for w in body["workers"]), body
        alive_body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ca.healthz_port}/livez").read())
        assert alive_body["alive"] and alive_body["workers_alive"] == 2
        r = run_sentryca("rotate", "issuer", "--issuer-credentials", str(creds))
        assert r.returncode == 0, r.stderr
        ca.wait_ready(60)
        assert len(sign_on_fresh_connections(ca, 4)) == 4
    finally:
        ca.stop()


def test_workers_without_grpc_start_and_say_why(tmp_path):
    """An expired issuer and no root key: no server certificate, so no gRPC (as one CA would);
    the supervisor still starts and its /healthz names the problem."""
    now = datetime.now(UTC)
    expired = bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now)
    write_bundle(
        tmp_path / "creds", TrustBundle(expired.trust_anchors, expired.issuer_chain, expired.issuer_key)
    )
    ca = serve(tmp_path, "--mode", "standalone", "--workers", "2")
    try:
        status, body = ca.healthz()
        assert status == 503 and [w["alive"] for w in body["workers"]] == [True, True], body
        assert all("expired" in json.dumps(w["details"]) for w in body["workers"]), body
        assert all(w["details"]["grpc"] != f"serving on port {ca.port}" for w in body["workers"]), body
    finally:
        log = ca.stop()
    assert ca.proc.returncode == 0, log
