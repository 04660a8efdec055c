"""The serving model's bounds (design §8.7), each seen by a real gRPC client over TLS: a call's
request message has a deadline, SignCertificate calls held at once are capped, a call without a
message is refused, and the health service answers while signing calls wait or are refused.

A grpcio client can send what a hostile one would by calling the method as request-streaming: the
generator it reads from decides when (or whether) the one message goes out.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import sentryca_client as client
from ca_core.config import load_config
from ca_core.errors import ConfigError
from handlers.call_limits import CallLimits, Slots
from handlers.server import CertificateAuthority
from handlers.server.listeners import FD_MARGIN, grpc_options, raise_fd_limit
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support.ca import ca_config
from support.pki import make_csr
from support.probe import metric, signs
from support.wait import wait_until

METHOD = "/dapr.proto.sentry.v1.CA/SignCertificate"


def request_bytes(app_id: str = "orders") -> bytes:
    return sentry_pb2.SignCertificateRequest(
        id=app_id, namespace="prod", certificate_signing_request=make_csr(), trust_domain="example.org"
    ).SerializeToString()


def streaming_call(chan: grpc.Channel):
    """SignCertificate as request-streaming over ``chan``: bytes in, raw response bytes out."""
    return chan.stream_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def held_until(release: threading.Event, *messages: bytes) -> Iterator[bytes]:
    """Yields nothing until ``release`` is set (the call's HEADERS are sent, its message is not),
    then ``messages``."""
    release.wait()
    yield from messages


@contextlib.contextmanager
def running_ca(store_dir, **settings: str) -> Iterator[CertificateAuthority]:
    """A started CA with ``settings`` over ``ca_config``'s; stopped at once on exit."""
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, **settings))
    try:
        yield ca
    finally:
        ca.stop(grace=0)


@pytest.fixture
def bounded_ca(store_dir) -> Iterator[CertificateAuthority]:
    with running_ca(store_dir, message_timeout="1s", max_in_flight="3") as ca:
        yield ca


def health_status(chan: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(chan)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_a_message_that_does_not_arrive_in_time_gets_deadline_exceeded(bounded_ca, channel_to):
    chan = channel_to(bounded_ca)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        streaming_call(chan)(held_until(release, request_bytes()), timeout=30)
    waited = time.monotonic() - started
    release.set()
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not arrive within 1 s" in err.value.details()
    assert waited < 20  # the server's 1 s, not the client's 30 s
    assert signs(bounded_ca, (bounded_ca.signer.bundle.anchors_pem))  # the CA serves on


def test_a_message_that_arrives_in_time_is_signed_as_a_unary_call_is(bounded_ca, channel_to):
    chan = channel_to(bounded_ca)
    release = threading.Event()
    threading.Timer(0.3, release.set).start()
    raw = streaming_call(chan)(held_until(release, request_bytes()), timeout=10)
    response = sentry_pb2.SignCertificateResponse.FromString(raw)
    verified = client.verify_response(response, bounded_ca.signer.bundle.anchors_pem)
    assert verified.spiffe_id == "spiffe://example.org/ns/prod/orders"


def test_a_call_that_ends_without_a_message_is_invalid_argument(bounded_ca, channel_to):
    with pytest.raises(grpc.RpcError) as err:
        streaming_call(channel_to(bounded_ca))(iter(()), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "without a request message" in err.value.details()


@pytest.fixture
def capped_ca(store_dir) -> Iterator[CertificateAuthority]:
    """At most 3 calls in flight, and a message timeout longer than any wait of the test: parked
    calls keep their places until released, however slow the machine (with bounded_ca's 1 s they
    could time out before a refusal was seen)."""
    with running_ca(store_dir, message_timeout="60s", max_in_flight="3") as ca:
        yield ca


def test_calls_past_max_in_flight_are_refused_while_health_answers(capped_ca, channel_to):
    chan = channel_to(capped_ca)
    release = threading.Event()
    parked = [
        streaming_call(chan).future(held_until(release, request_bytes(f"parked{i}")), timeout=30)
        for i in range(3)
    ]
    try:
        # The three parked calls hold every place: the next call is refused at once.
        def refused() -> bool:
            try:
                client.sign(chan, make_csr(), "orders", "prod", timeout=5)
            except grpc.RpcError as e:
                return e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3" in e.details()
            return False

        wait_until(refused, timeout=10, what="a call past --max-in-flight refused")
        assert health_status(chan) == health_pb2.HealthCheckResponse.SERVING
        release.set()  # the parked messages arrive: each is signed
        for call in parked:
            sentry_pb2.SignCertificateResponse.FromString(call.result(timeout=10))
    finally:
        release.set()
    assert signs(capped_ca, capped_ca.signer.bundle.anchors_pem)  # places freed
    text = metric_lines(capped_ca)
    assert 'reason="in_flight_limit"' in text


def metric_lines(ca: CertificateAuthority) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{ca.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_stalled_calls_hold_no_thread(store_dir, channel_to):
    """More calls waiting for their message than the server has I/O threads, over one connection,
    do not delay a good caller on another connection."""
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, message_timeout="30s"))
    try:
        stalled = channel_to(ca)
        release = threading.Event()
        parked = [
            streaming_call(stalled).future(held_until(release, request_bytes()), timeout=60)
            for _ in range(64)
        ]
        try:
            good = client.channel(f"localhost:{ca.grpc_port}", ca.signer.bundle.anchors_pem)
            with good:
                for _ in range(10):
                    client.sign(good, make_csr(), "orders", "prod", timeout=5)
                assert health_status(good) == health_pb2.HealthCheckResponse.SERVING
        finally:
            release.set()
        assert all(call.result(timeout=30) for call in parked)
        assert metric(ca, "dapr_sentry_cert_sign_success_total") >= 74
    finally:
        ca.stop(grace=0)


def test_bounds_are_options_with_checked_ranges():
    cfg = load_config(
        {
            "max_in_flight": "8",
            "message_timeout": "2s",
            "max_connections": "100",
            "handshake_timeout": "3s",
            "idle_timeout": "1m",
        },
        {},
    )
    assert (cfg.max_in_flight, cfg.max_connections) == (8, 100)
    options = dict(grpc_options(cfg, reuse_port=False))
    assert options["grpc.max_allowed_incoming_connections"] == 100
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.max_connection_idle_ms"] == 60_000
    env = load_config({}, {"SENTRY_MESSAGE_TIMEOUT": "500ms", "SENTRY_MAX_IN_FLIGHT": "2"})
    assert env.message_timeout.total_seconds() == 0.5 and env.max_in_flight == 2
    for flags, flag in (
        ({"max_in_flight": "0"}, "--max-in-flight"),
        ({"message_timeout": "0s"}, "--message-timeout"),
        ({"handshake_timeout": "11m"}, "--handshake-timeout"),
        ({"idle_timeout": "25h"}, "--idle-timeout"),
        ({"max_connections": "-1"}, "--max-connections"),
    ):
        with pytest.raises(ConfigError, match=flag):
            load_config(flags, {})


def test_the_open_file_limit_is_raised_to_fit_the_connection_cap():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(soft, 512)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        want = min(lowered + 200, hard) if hard != resource.RLIM_INFINITY else lowered + 200
        assert raise_fd_limit(want) == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want
        assert raise_fd_limit(want - 100) == want  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert FD_MARGIN > 0


def test_a_ca_started_under_a_low_open_file_limit_raises_it(store_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096 + FD_MARGIN:
        pytest.skip(f"hard open-file limit {hard} is below the default cap")
    ca = CertificateAuthority()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        ca.start(ca_config(store_dir))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 4096 + FD_MARGIN
    finally:
        ca.stop(grace=0)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_calls_on_one_grpcio_channel_past_the_stream_limit_end_served_or_unavailable(store_dir):
    """32 calls at once on one channel are all served; 600 against --max-concurrent-streams 100
    all end well before their deadline, each served or refused UNAVAILABLE (design §8.7: gRPC
    core refuses a stream it still counts; never a call left waiting or another failure)."""
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, rate_limit="0", max_concurrent_streams="100"))
    try:
        for count in (32, 600):
            with client.channel(f"localhost:{ca.grpc_port}", ca.signer.bundle.anchors_pem) as chan:
                stub = sentry_pb2_grpc.CAStub(chan)
                requests = [
                    sentry_pb2.SignCertificateRequest.FromString(request_bytes(f"app{i}"))
                    for i in range(count)
                ]
                started = time.monotonic()
                calls = [stub.SignCertificate.future(request, timeout=60) for request in requests]
                served, failures = 0, []
                for call in calls:
                    try:
                        served += call.result().workload_certificate.startswith(
                            b"-----BEGIN CERTIFICATE-----"
                        )
                    except grpc.RpcError as e:
                        failures.append(e.code())
                took = time.monotonic() - started
            if count == 32:
                assert served == 32 and failures == []
            else:
                assert served + len(failures) == 600 and served > 0
                assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}
                assert took < 50  # every call ended before its 60 s deadline
    finally:
        ca.stop(grace=0)


def test_slots_cap_calls_in_all_and_per_peer():
    limits = CallLimits(max_in_flight=3, max_in_flight_per_peer=2, message_timeout=1.0)
    slots = Slots()
    assert slots.take("10.0.0.1", limits, in_total=True) is None
    assert slots.take("10.0.0.1", limits, in_total=False) is None  # a health call: per peer only
    refused = slots.take("10.0.0.1", limits, in_total=True)
    assert refused is not None and refused.reason == "peer_in_flight_limit"
    assert slots.take("10.0.0.2", limits, in_total=True) is None
    assert slots.take("10.0.0.3", limits, in_total=True) is None
    refused = slots.take("10.0.0.4", limits, in_total=True)
    assert refused is not None and refused.reason == "in_flight_limit" and slots.total == 3
    slots.give("10.0.0.1", in_total=False)
    slots.give("10.0.0.1", in_total=True)
    assert slots.held_by("10.0.0.1") == 0 and slots.total == 2
    assert slots.take("10.0.0.4", limits, in_total=True) is None
    unlimited = CallLimits(max_in_flight=10, max_in_flight_per_peer=0)
    assert all(slots.take("10.0.0.9", unlimited, in_total=False) is None for _ in range(50))
