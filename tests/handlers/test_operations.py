"""Operations (design §9, issue 6): metrics, the gRPC health service, server-certificate renewal
counted in metrics, request ids and audit records. Real CA servers on loopback, over TLS."""

import json
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import sentryca_client as client
from ca_core.bundle import TrustBundle
from ca_core.certs import generate_issuer
from ca_core.spiffe_id import SpiffeId
from handlers.grpc_service import CALL_ID_TRAILER, SERVICE
from handlers.logs import JsonFormatter
from handlers.metrics import bounded_reason
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.pki import bundle_with_issuer_window, make_csr, make_key, write_bundle


def sample(ca, name: str, **labels) -> float | None:
    """The value of one sample in the CA's exposition (None when absent)."""
    for family in text_string_to_metric_families(ca.metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def sign_call(chan, **fields):
    """(response, trailing metadata dict) of one SignCertificate call."""
    stub = sentry_pb2_grpc.CAStub(chan)
    base = {"id": "orders", "namespace": "prod", "certificate_signing_request": make_csr()}
    response, call = stub.SignCertificate.with_call(
        sentry_pb2.SignCertificateRequest(**(base | fields)), timeout=10
    )
    return response, dict(call.trailing_metadata())


def refused(chan, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        sign_call(chan, **fields)
    return e.value


def health_status(chan, service: str):
    return (
        health_pb2_grpc.HealthStub(chan)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


# --- metrics -------------------------------------------------------------------------------


def test_failures_are_counted_by_category_and_reason_and_latency_by_code(running_ca, channel_to):
    chan = channel_to(running_ca)
    sign_call(chan)
    assert refused(chan, certificate_signing_request=b"not PEM").code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused(chan, id="").code() is grpc.StatusCode.PERMISSION_DENIED
    assert refused(chan, token_validator=42).code() is grpc.StatusCode.INVALID_ARGUMENT
    failures = {
        (s.labels["category"], s.labels["reason"]): s.value
        for f in text_string_to_metric_families(running_ca.metrics.exposition().decode())
        for s in f.samples
        if s.name == "dapr_sentry_cert_sign_failure_total"
    }
    assert failures[("permission_denied", "invalid_identity")] == 1
    assert failures[("invalid_request", "validator_unknown")] == 1
    assert sum(v for (c, r), v in failures.items() if c == "invalid_request" and r.startswith("csr_")) == 1
    assert sample(running_ca, "dapr_sentry_cert_sign_request_received_total") == 4
    assert sample(running_ca, "dapr_sentry_cert_sign_success_total") == 1
    assert sample(running_ca, "sentryca_sign_request_duration_seconds_count", code="OK") == 1
    assert sample(running_ca, "sentryca_sign_request_duration_seconds_count", code="INVALID_ARGUMENT") == 2
    assert sample(running_ca, "sentryca_sign_request_duration_seconds_count", code="PERMISSION_DENIED") == 1


def test_no_caller_input_becomes_a_label(running_ca, channel_to):
    chan = channel_to(running_ca)
    refused(chan, id="x" * 300, namespace="evil\nlabel")
    text = running_ca.metrics.exposition().decode()
    assert "xxxxxxxx" not in text and "evil" not in text
    assert bounded_reason("token_expired") == "token_expired"
    assert bounded_reason('x"}\n') == "other" and bounded_reason("a" * 41) == "other"


def test_expired_issuer_is_counted_as_issuer_invalid_and_health_is_not_serving(store_dir):
    now = datetime.now(UTC)
    write_bundle(store_dir, bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now))
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))  # the server certificate is signed by the root
    try:
        anchors = (store_dir / "ca.crt").read_bytes()
        with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
            assert refused(chan).code() is grpc.StatusCode.FAILED_PRECONDITION
            assert health_status(chan, "") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health_status(chan, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        failed = sample(
            ca, "dapr_sentry_cert_sign_failure_total", category="issuer_invalid", reason="issuer_expired"
        )
        assert failed == 1
    finally:
        ca.stop(grace=0)


def test_expiry_gauges_and_coverage_follow_the_bundle_in_force(running_ca, store_dir, tmp_path):
    bundle = running_ca.signer.bundle
    issuer_end = bundle.issuer.not_valid_after_utc.timestamp()
    root_end = bundle.trust_anchors[0].not_valid_after_utc.timestamp()
    assert sample(running_ca, "dapr_sentry_issuercert_expiry_timestamp") == issuer_end
    assert sample(running_ca, "dapr_sentry_rootcert_expiry_timestamp") == root_end
    assert sample(running_ca, "sentryca_signing_coverage_expiry_timestamp") == min(issuer_end, root_end)
    assert sample(running_ca, "dapr_sentry_issuercert_changed_total") == 0

    # a new issuer under the same root: gauges move, the change is counted once
    renewed = _new_issuer_bundle(tmp_path / "renewed", running_ca, days=60)
    running_ca.restart(ca_config(tmp_path / "renewed"))
    assert sample(running_ca, "dapr_sentry_issuercert_changed_total") == 1
    new_end = renewed.issuer.not_valid_after_utc.timestamp()
    assert sample(running_ca, "dapr_sentry_issuercert_expiry_timestamp") == new_end
    assert sample(running_ca, "sentryca_signing_coverage_expiry_timestamp") == min(new_end, root_end)
    running_ca.restart(ca_config(tmp_path / "renewed", workload_cert_ttl="2h"))  # same bundle
    assert sample(running_ca, "dapr_sentry_issuercert_changed_total") == 1


def _new_issuer_bundle(directory, ca, days: int) -> TrustBundle:
    """A bundle in ``directory`` with ``ca``'s root and a new issuer valid for ``days`` from now."""
    current = ca.signer.bundle
    root = current.trust_anchors[0]
    key = make_key()
    issuer = generate_issuer(
        root,
        current.root_key,
        key,
        SpiffeId("public", "default", "dapr-sentry"),
        datetime.now(UTC),
        lifetime=timedelta(days=days),
    )
    bundle = TrustBundle((root,), (issuer,), key, current.root_key)
    write_bundle(directory, bundle)
    return bundle


# --- gRPC health service over TLS ----------------------------------------------------------


def test_grpc_health_service_over_tls(running_ca, channel_to):
    chan = channel_to(running_ca)
    assert health_status(chan, "") == health_pb2.HealthCheckResponse.SERVING
    assert health_status(chan, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health_status(chan, "no.such.Service")
    assert e.value.code() is grpc.StatusCode.NOT_FOUND


# --- server certificate renewal, counted ---------------------------------------------------


def test_server_certificate_renewal_and_its_failures_are_counted(store_dir):
    real_now = datetime.now(UTC)
    good = bundle_with_issuer_window(real_now - timedelta(days=1), real_now + timedelta(hours=1), real_now)
    # without the root key, nothing can sign once the issuer has expired
    write_bundle(store_dir, TrustBundle(good.trust_anchors, good.issuer_chain, good.issuer_key, None))
    clock = [real_now]
    ca = CertificateAuthority(clock=lambda: clock[0])
    ca.start(ca_config(store_dir, workload_cert_ttl="20m"))
    try:
        assert sample(ca, "sentryca_servercert_renewed_total") == 0
        clock[0] = real_now + timedelta(minutes=10, seconds=1)
        ca.maintain()
        assert sample(ca, "sentryca_servercert_renewed_total") == 1
        assert sample(ca, "dapr_sentry_servercert_issue_failed_total") == 0

        clock[0] = real_now + timedelta(hours=1, minutes=1)  # due again, but the issuer has expired
        wake = ca.maintain()
        assert sample(ca, "dapr_sentry_servercert_issue_failed_total") == 1
        assert sample(ca, "sentryca_servercert_renewed_total") == 1
        assert wake <= clock[0] + timedelta(minutes=1)  # retried a minute later
        clock[0] = wake
        ca.maintain()
        assert sample(ca, "dapr_sentry_servercert_issue_failed_total") == 2
    finally:
        ca.stop(grace=0)


# --- request ids and audit -----------------------------------------------------------------


def test_one_audit_record_per_issuance_with_the_call_id(running_ca, channel_to, caplog):
    chan = channel_to(running_ca)
    csr = make_csr()
    token = "secret-token-value-never-logged"
    with caplog.at_level(logging.DEBUG):
        response, trailers = sign_call(chan, certificate_signing_request=csr, token=token)
        refused(chan, id="")
    leaf = x509.load_pem_x509_certificates(response.workload_certificate)[0]
    audits = [r for r in caplog.records if r.name == "sentryca.audit"]
    assert len(audits) == 1
    record = audits[0]
    assert record.event == "certificate_issued"
    assert record.serial == f"{leaf.serial_number:x}"
    assert record.spiffe_id == "spiffe://public/ns/prod/orders"
    assert record.validator == "insecure"
    assert record.peer.startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:"))
    assert record.not_after == leaf.not_valid_after_utc.isoformat()
    assert record.call_id == trailers[CALL_ID_TRAILER] and len(record.call_id) == 16
    line = json.loads(JsonFormatter().format(record))  # --log-as-json
    assert {k: line[k] for k in ("logger", "event", "serial", "spiffe_id", "validator", "call_id")} == {
        "logger": "sentryca.audit",
        "event": "certificate_issued",
        "serial": record.serial,
        "spiffe_id": record.spiffe_id,
        "validator": "insecure",
        "call_id": record.call_id,
    }
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and len(refusals[0].call_id) == 16
    assert refusals[0].reason == "invalid_identity"
    formatter = JsonFormatter()
    body = b"".join(csr.splitlines()[1:-1]).decode()
    for r in caplog.records:
        text = formatter.format(r)
        assert token not in text and body[:40] not in text and "PRIVATE KEY" not in text


def test_bundle_load_and_change_are_audited(store_dir, tmp_path, caplog):
    ca = CertificateAuthority()
    with caplog.at_level(logging.INFO, logger="sentryca.audit"):
        ca.start(ca_config(store_dir))
        try:
            first = ca.signer.bundle
            _new_issuer_bundle(tmp_path / "renewed", ca, days=60)
            ca.restart(ca_config(tmp_path / "renewed"))
            second = ca.signer.bundle
        finally:
            ca.stop(grace=0)
    events = [r for r in caplog.records if r.name == "sentryca.audit" and r.event.startswith("bundle_")]
    assert [r.event for r in events] == ["bundle_created", "bundle_changed"]
    created, changed = events
    assert created.issuer_serial == f"{first.issuer.serial_number:x}"
    assert changed.issuer_serial == f"{second.issuer.serial_number:x}"
    assert changed.previous_issuer_serial == created.issuer_serial
    assert changed.anchors == created.anchors  # same root
    server_certs = [
        r for r in caplog.records if r.name == "sentryca.audit" and r.event == "certificate_issued"
    ]
    assert len(server_certs) == 2 and all(r.validator == "self" and r.peer is None for r in server_certs)
