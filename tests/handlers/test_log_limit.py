"""Log lines a peer can cause are bounded (design §9.4): a flood of bad calls from one peer
grows the CA's log by at most its buckets' worth, without tracebacks or raw bytes."""

from __future__ import annotations

import logging
import re
import socket
import time

import grpc
import pytest

from handlers import log_limit
from handlers.log_limit import PEER_BURST, PEER_RATE, LogLimiter, sanitised
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support import h2raw
from support.cli import serve
from support.probe import metric

PATH = b"/dapr.proto.sentry.v1.CA/SignCertificate"
MAX_LINE_BYTES = 1400  # a refused line: message (≤ log_limit.MAX_LINE) + time, level, logger


def test_sanitised_escapes_and_cuts():
    assert sanitised(b"\xff" * 8192) == "\\xff" * 64 + "… (8192 bytes)"
    assert sanitised("a\nb\x1b") == "a\\x0ab\\x1b"
    assert sanitised("é" * 3) == "\\xe9" * 3


def test_limiter_lets_the_first_lines_through_and_summarises_the_rest(caplog):
    now = [0.0]
    limiter = LogLimiter(clock=lambda: now[0])
    counted = []
    limiter.on_suppressed = lambda: counted.append(1)
    assert sum(limiter.allow("10.0.0.1") for _ in range(50)) == PEER_BURST
    assert limiter.allow("10.0.0.2")  # another peer has its own bucket
    assert len(counted) == 50 - PEER_BURST
    now[0] = log_limit.SUMMARY_INTERVAL + 1
    with caplog.at_level(logging.WARNING, "sentryca.log_limit"):
        assert limiter.allow("10.0.0.1")
    assert [r.suppressed for r in caplog.records] == [50 - PEER_BURST]


def test_global_bucket_bounds_many_peers():
    limiter = LogLimiter(clock=lambda: 0.0)
    allowed = sum(limiter.allow(f"10.0.{i // 250}.{i % 250}") for i in range(1000))
    assert allowed == log_limit.GLOBAL_BURST


def test_a_flood_of_bad_calls_grows_the_log_by_a_bound(tmp_path):
    ca = serve(tmp_path)
    try:
        ca.wait_ready()
        stub = sentry_pb2_grpc.CAStub(ca.channel)
        started = time.monotonic()
        n = 60
        for _ in range(n):
            h2raw.call(
                ca.port, str(ca.creds / "ca.crt"), PATH, b"\x0a\x01a", extra=[(b"x-bad", b"\xff" * 8192)]
            )
            with pytest.raises(grpc.RpcError):
                stub.SignCertificate(
                    sentry_pb2.SignCertificateRequest(
                        id="a", namespace="ns", certificate_signing_request=b"\xff garbage" * 100
                    ),
                    timeout=10,
                )
            with socket.create_connection(("127.0.0.1", ca.port), timeout=5) as c:
                c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert ca.spiffe_id("orders", "prod")  # a good client is still served
        suppressed = metric(ca, "sentryca_log_lines_suppressed_total")
        elapsed = time.monotonic() - started
    finally:
        err = ca.stop()
    # two buckets: the peer's refused calls, and grpc-core's "not UTF-8" lines (no peer known)
    allowed_lines = 2 * (PEER_BURST + PEER_RATE * elapsed) + 3  # + a summary, the stop lines
    assert len(err.encode()) <= allowed_lines * MAX_LINE_BYTES, err[:3000]
    assert "Traceback" not in err
    assert not re.search(r"(\\xff){65}", err)
    assert err.count("sign request refused") >= PEER_BURST  # the first refusals are logged
    assert err.count("not UTF-8") >= PEER_BURST
    assert suppressed >= 2 * n - allowed_lines
