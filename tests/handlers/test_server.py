"""The real CA server on loopback: gRPC over TLS, health, metrics, bundle cases, lifecycle.

design §3, §5, §8, §9."""

import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509

import sentryca_client as client
from ca_core.errors import BundleError, CAError
from handlers.server import AlreadyRunning, CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.pki import bundle_with_issuer_window, make_bundle, make_csr, make_key, snapshot, write_bundle


def http_get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def raw_sign(chan, **fields):
    stub = sentry_pb2_grpc.CAStub(chan)
    base = {"id": "orders", "namespace": "prod", "certificate_signing_request": make_csr()}
    return stub.SignCertificate(sentry_pb2.SignCertificateRequest(**(base | fields)), timeout=10)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_signs_over_tls_and_answers_the_wire_contract(running_ca, channel_to, store_dir):
    resp = raw_sign(channel_to(running_ca))
    chain = x509.load_pem_x509_certificates(resp.workload_certificate)
    anchors = (store_dir / "ca.crt").read_bytes()
    assert len(chain) == 2  # leaf, issuer; never the root
    assert list(resp.trust_chain_certificates) == [anchors]
    assert resp.valid_until.ToDatetime(tzinfo=UTC) == chain[0].not_valid_after_utc
    assert not resp.HasField("jwt") and len(resp.per_audience_jwts) == 0
    signed = client.verify_response(resp, anchors)
    assert signed.spiffe_id == "spiffe://public/ns/prod/orders"


def test_token_validator_insecure_by_number_and_trust_domain(running_ca, channel_to):
    resp = raw_sign(channel_to(running_ca), token_validator=1, trust_domain="example.org")
    leaf = x509.load_pem_x509_certificates(resp.workload_certificate)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/ns/prod/orders"]


def _not_pem():
    return {"certificate_signing_request": b"this is not PEM"}


def _bad_signature():
    import base64

    der = bytearray(base64.b64decode(b"".join(make_csr().splitlines()[1:-1])))
    der[-1] ^= 1
    return {
        "certificate_signing_request": b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    }


BAD_REQUESTS = [
    ("not PEM", _not_pem, grpc.StatusCode.INVALID_ARGUMENT, "not PEM"),
    ("bad CSR signature", _bad_signature, grpc.StatusCode.INVALID_ARGUMENT, "self-signature"),
    (
        "RSA-1024",
        lambda: {"certificate_signing_request": make_csr(make_key("rsa1024"))},
        grpc.StatusCode.INVALID_ARGUMENT,
        "1024",
    ),
    (
        "validator 7",
        lambda: {"token_validator": 7},
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown token validator 7",
    ),
    (
        "validator -1",
        lambda: {"token_validator": -1},
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown token validator -1",
    ),
    ("validator kubernetes", lambda: {"token_validator": 2}, grpc.StatusCode.INVALID_ARGUMENT, "not enabled"),
    ("empty CSR", lambda: {"certificate_signing_request": b""}, grpc.StatusCode.PERMISSION_DENIED, "empty"),
    ("empty id", lambda: {"id": ""}, grpc.StatusCode.PERMISSION_DENIED, "app id is empty"),
    ("id with a dot", lambda: {"id": "a.b"}, grpc.StatusCode.PERMISSION_DENIED, "'.'"),
    ("65-character id", lambda: {"id": "a" * 65}, grpc.StatusCode.PERMISSION_DENIED, "64"),
    ("empty namespace", lambda: {"namespace": ""}, grpc.StatusCode.PERMISSION_DENIED, "namespace is empty"),
    (
        "invalid trust domain",
        lambda: {"trust_domain": "Bad Domain"},
        grpc.StatusCode.PERMISSION_DENIED,
        "trust domain",
    ),
    (
        "the CA's own id",
        lambda: {"id": "dapr-sentry", "namespace": "default", "trust_domain": "localhost"},
        grpc.StatusCode.PERMISSION_DENIED,
        "CA's own identity",
    ),
    (
        "1 MiB request",
        lambda: {"certificate_signing_request": b"A" * (1 << 20)},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
]


@pytest.mark.parametrize("name, fields, code, words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_their_code_and_the_server_keeps_serving(
    running_ca, channel_to, name, fields, code, words
):
    chan = channel_to(running_ca)
    with pytest.raises(grpc.RpcError) as e:
        raw_sign(chan, **fields())
    assert e.value.code() == code
    assert words in e.value.details()
    assert "Traceback" not in e.value.details()
    assert raw_sign(chan).workload_certificate  # still serving


def test_server_certificate_is_the_cas_spiffe_id_with_local_names(running_ca, store_dir):
    ctx = ssl.create_default_context(cafile=str(store_dir / "ca.crt"))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", running_ca.grpc_port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://localhost/ns/default/dapr-sentry"
    ]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}


def test_health_and_liveness(running_ca):
    status, body = http_get(running_ca.healthz_port, "/healthz")
    assert status == 200 and body["ready"] is True
    status, body = http_get(running_ca.healthz_port, "/livez")
    assert status == 200 and body["alive"] is True
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{running_ca.healthz_port}/nope", timeout=5)
    assert e.value.code == 404


def test_metrics_count_requests_by_outcome(running_ca, channel_to):
    chan = channel_to(running_ca)
    raw_sign(chan)
    with pytest.raises(grpc.RpcError):
        raw_sign(chan, id="")
    with urllib.request.urlopen(f"http://127.0.0.1:{running_ca.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "dapr_sentry_cert_sign_request_received_total 2.0" in text
    assert "dapr_sentry_cert_sign_success_total 1.0" in text
    failure = 'dapr_sentry_cert_sign_failure_total{category="permission_denied",reason="invalid_identity"}'
    assert f"{failure} 1.0" in text
    assert "dapr_sentry_issuercert_expiry_timestamp" in text


# --- bundle cases at start (design §5) -------------------------------------------------------


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "issuer.key").unlink(), "missing"),
        (lambda d: (d / "issuer.key").write_bytes(make_bundle().to_items()["issuer.key"]), "does not match"),
        (lambda d: (d / "ca.crt").write_bytes(b"\x00garbage\xff"), "ca.crt"),
    ],
    ids=["missing issuer.key", "mismatched issuer.key", "garbage ca.crt"],
)
def test_damaged_bundle_refuses_to_start_and_touches_nothing(store_dir, damage, words):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    damage(store_dir)
    before = snapshot(store_dir)
    ca = CertificateAuthority()
    cfg = ca_config(store_dir)
    with pytest.raises(BundleError) as e:
        ca.start(cfg)
    assert words in str(e.value) and "refusing to start" in str(e.value)
    assert snapshot(store_dir) == before
    assert not ca.running and ca.grpc_port is None


def test_expired_issuer_starts_not_ready_and_refuses_to_sign(store_dir, caplog):
    now = datetime.now(UTC)
    write_bundle(store_dir, bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now))
    ca = CertificateAuthority()
    with caplog.at_level(logging.INFO):
        ca.start(ca_config(store_dir))
    try:
        status, body = http_get(ca.healthz_port, "/healthz")
        assert status == 503 and "issuer" in body["not_ready"] and "expired" in body["issuer"]
        anchors = (store_dir / "ca.crt").read_bytes()
        with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
            with pytest.raises(grpc.RpcError) as e:
                raw_sign(chan)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expired" in e.value.details()
        assert any(r.levelno == logging.ERROR and "expired" in r.getMessage() for r in caplog.records)
    finally:
        ca.stop(grace=0)


def test_issuer_with_two_hours_left_caps_the_leaf(store_dir):
    now = datetime.now(UTC)
    bundle = bundle_with_issuer_window(now - timedelta(days=30), now + timedelta(hours=2), now)
    write_bundle(store_dir, bundle)
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, workload_cert_ttl="24h"))
    try:
        with client.channel(f"localhost:{ca.grpc_port}", bundle.anchors_pem) as chan:
            resp = raw_sign(chan)
        leaf = x509.load_pem_x509_certificates(resp.workload_certificate)[0]
        assert leaf.not_valid_after_utc == bundle.issuer.not_valid_after_utc
        assert resp.valid_until.ToDatetime(tzinfo=UTC) == bundle.issuer.not_valid_after_utc
    finally:
        ca.stop(grace=0)


def test_existing_bundle_is_loaded_not_replaced(store_dir):
    bundle = make_bundle(datetime.now(UTC))
    write_bundle(store_dir, bundle)
    before = snapshot(store_dir)
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))
    try:
        assert ca.signer.bundle.trust_anchors == bundle.trust_anchors
    finally:
        ca.stop(grace=0)
    assert snapshot(store_dir) == before


# --- lifecycle (design §8) -------------------------------------------------------------------


def test_start_twice_is_an_error(running_ca, store_dir):
    with pytest.raises(AlreadyRunning, match="already running"):
        running_ca.start(ca_config(store_dir))
    assert running_ca.running


def test_restart_with_a_new_ttl_applies_it(running_ca, channel_to, store_dir):
    chan = channel_to(running_ca)
    before = x509.load_pem_x509_certificates(raw_sign(chan).workload_certificate)[0]
    port = running_ca.grpc_port
    running_ca.restart(ca_config(store_dir, workload_cert_ttl="2h"))
    assert running_ca.grpc_port == port
    after = x509.load_pem_x509_certificates(raw_sign(chan).workload_certificate)[0]
    assert before.not_valid_after_utc - before.not_valid_before_utc == timedelta(hours=24, minutes=15)
    assert after.not_valid_after_utc - after.not_valid_before_utc == timedelta(hours=2, minutes=15)


def test_restart_with_a_broken_config_keeps_serving(running_ca, channel_to, store_dir, tmp_path):
    chan = channel_to(running_ca)
    broken = tmp_path / "broken"
    write_bundle(broken, make_bundle(datetime.now(UTC)))
    (broken / "issuer.key").unlink()
    with pytest.raises(BundleError):
        running_ca.restart(ca_config(broken))
    assert raw_sign(chan).workload_certificate


def test_stop_closes_the_ports_and_start_works_again(store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))
    ports = (ca.grpc_port, ca.healthz_port, ca.metrics_port)
    assert all(port_open(p) for p in ports)
    ca.stop()
    assert not ca.running
    assert not any(port_open(p) for p in ports)
    ca.start(ca_config(store_dir, port=str(ports[0])))
    try:
        assert ca.grpc_port == ports[0]
        anchors = (store_dir / "ca.crt").read_bytes()
        with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
            assert raw_sign(chan).workload_certificate
    finally:
        ca.stop(grace=0)


def test_port_in_use_fails_start_cleanly(store_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        ca = CertificateAuthority()
        with pytest.raises(Exception, match="cannot listen"):
            ca.start(ca_config(store_dir, port=str(s.getsockname()[1])))
        assert not ca.running


@pytest.mark.parametrize(
    "left, level, words",
    [
        (timedelta(days=-1), logging.ERROR, "expired"),
        (timedelta(days=10), logging.WARNING, "about to expire in 10 days"),
        (timedelta(days=200), logging.DEBUG, "valid for 200 days"),
    ],
)
def test_expiry_watcher_levels_with_an_injected_clock(store_dir, caplog, left, level, words):
    real_now = datetime.now(UTC)
    bundle = make_bundle(real_now)
    write_bundle(store_dir, bundle)
    clock = [real_now]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(ca_config(store_dir))
    try:
        clock[0] = bundle.trust_anchors[0].not_valid_after_utc - left
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="sentryca.expiry"):
            findings = ca.check_expiry()
        root = next(f for f in findings if f.role == "root")
        assert root.level == level and words in root.message
        assert any(r.levelno == level and words in r.getMessage() for r in caplog.records)
    finally:
        ca.stop(grace=0)


def test_watcher_checks_once_at_start(store_dir, caplog):
    with caplog.at_level(logging.DEBUG, logger="sentryca.expiry"):
        ca = CertificateAuthority()
        ca.start(ca_config(store_dir))
        ca.stop(grace=0)
    roles = {getattr(r, "role", None) for r in caplog.records if r.name == "sentryca.expiry"}
    assert roles == {"root", "issuer"}


def test_healthz_port_in_use_fails_start_cleanly_and_frees_grpc(store_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        ca = CertificateAuthority()
        with pytest.raises(CAError, match=f"cannot listen on 127.0.0.1:{busy} for /healthz"):
            ca.start(ca_config(store_dir, healthz_port=str(busy)))
        assert not ca.running and ca.grpc_port is None


def _served_certificate(port: int, anchors: str) -> x509.Certificate:
    ctx = ssl.create_default_context(cafile=anchors)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_server_certificate_is_renewed_at_half_life_without_a_restart(store_dir):
    real_now = datetime.now(UTC)
    clock = [real_now]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(ca_config(store_dir, workload_cert_ttl="20m"))
    try:
        anchors = str(store_dir / "ca.crt")
        first = _served_certificate(ca.grpc_port, anchors)
        assert first.not_valid_after_utc == (real_now + timedelta(minutes=20)).replace(microsecond=0)
        clock[0] = real_now + timedelta(minutes=9)
        ca.maintain()
        assert _served_certificate(ca.grpc_port, anchors).serial_number == first.serial_number  # not due yet
        clock[0] = real_now + timedelta(minutes=10, seconds=1)
        next_round = ca.maintain()
        second = _served_certificate(ca.grpc_port, anchors)
        assert second.serial_number != first.serial_number
        assert second.not_valid_after_utc > first.not_valid_after_utc
        assert next_round <= clock[0] + timedelta(minutes=10, seconds=1)  # the next renewal is scheduled
        status, body = http_get(ca.healthz_port, "/healthz")
        assert status == 200, body
    finally:
        ca.stop(grace=0)
