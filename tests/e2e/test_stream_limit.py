"""Many calls on one connection against ``--max-concurrent-streams 100`` (issue 12, item 2): the
real CA on loopback (INSECURE validator, TLS) and the benchmark's native load generator
(bench/loadgen, grpc-go, as Dapr's sidecars), which keeps the calls past the server's advertised
SETTINGS_MAX_CONCURRENT_STREAMS waiting on the client instead of sending them.

What clients see is what design §8.7 documents: gRPC core's server counts a stream against the
limit until it has freed it, after the client has read the answer and may have started the next
call on the freed place; such a call is refused with RST_STREAM(REFUSED_STREAM), which a client
sees as UNAVAILABLE. With 32 calls in flight on one connection all succeed; with 600 queued on
one, every call ends well within its deadline, answered or refused. (Turning that accounting off
serves all 600, but lets a peer sending HEADERS+RST_STREAM floods make other clients' calls fail:
measured by tests/e2e/test_attack.py, so the CA keeps gRPC core's default.)"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest

from handlers.server import CertificateAuthority

from support import REPO_ROOT
from support.ca import ca_config
from support.pki import make_csr

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the first go build takes ~30 s

LIMIT = 100  # --max-concurrent-streams
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loadgen():
    """bench/loadgen built (bench/native_loadgen.py); CI must have go and grpc-go (.ci/run
    installs them), by hand the tests are skipped without them."""
    native = bench_module("native_loadgen")
    missing = native.available()
    if missing:
        assert not os.environ.get("CI"), f"CI must build the native load generator: {missing}"
        pytest.skip(missing)
    return native


@pytest.fixture
def ca(tmp_path: Path):
    server = CertificateAuthority()
    server.start(ca_config(tmp_path / "credentials", max_concurrent_streams=str(LIMIT), rate_limit="0"))
    try:
        yield server
    finally:
        server.stop(grace=0)


def advertised_settings(port: int, cafile: Path) -> dict[int, int]:
    """The parameters of the server's first SETTINGS frame on a new TLS HTTP/2 connection."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = b""
            while True:
                while len(data) < 9:
                    chunk = s.recv(65536)
                    assert chunk, "the server closed the connection before its SETTINGS"
                    data += chunk
                length, kind, flags = int.from_bytes(data[:3], "big"), data[3], data[4]
                while len(data) < 9 + length:
                    data += s.recv(65536)
                payload, data = data[9 : 9 + length], data[9 + length :]
                if kind == 0x4 and not flags & 0x1:  # SETTINGS, not an ACK
                    pairs = (struct.unpack(">HI", payload[i : i + 6]) for i in range(0, length, 6))
                    return dict(pairs)


def run_on_one_connection(native, ca: CertificateAuthority, tmp_path: Path, concurrency: int, calls: int):
    """``calls`` calls, each with its own CSR, from ``concurrency`` goroutines sharing one
    connection, released together after one warm-up call; the generator's JSON result."""
    bodies = tmp_path / "bodies"
    native.write_bodies(bodies, (native.grpc_body(make_csr(), f"app-{i}") for i in range(calls + 1)))
    argv = [str(native.binary()), "-target", f"127.0.0.1:{ca.grpc_port}", "-server-name", "localhost"]
    argv += ["-ca", str(tmp_path / "credentials" / "ca.crt"), "-bodies", str(bodies)]
    argv += ["-concurrency", str(concurrency), "-streams-per-conn", str(concurrency), "-calls", str(calls)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["connections"] == 1 and result["dials"] == 1, result  # one TCP connection, kept
    assert result["completed"] + result["errors"] == calls and not result["bodies_wrapped"], result
    return result


def test_the_server_advertises_its_limit_and_calls_beyond_it_on_one_connection_all_end(loadgen, ca, tmp_path):
    anchors = tmp_path / "credentials" / "ca.crt"
    assert advertised_settings(ca.grpc_port, anchors)[SETTINGS_MAX_CONCURRENT_STREAMS] == LIMIT
    below = run_on_one_connection(loadgen, ca, tmp_path, 32, 320)
    assert below["completed"] == 320 and below["failures"] == {}, below
    beyond = run_on_one_connection(loadgen, ca, tmp_path, 6 * LIMIT, 6 * LIMIT)
    # Every call ended well within its deadline: answered, or refused by the server (never timed
    # out waiting for a stream, never failed otherwise).
    assert set(beyond["failures"]) <= {"Unavailable"}, beyond
    assert beyond["completed"] > 0 and beyond["max_ms"] < 30_000, beyond
    if beyond["failures"]:
        assert "REFUSED_STREAM" in beyond["first_error"], beyond
