"""Faults (issue 7, hardening 2): the disk full while a bundle is written, the JWKS server and
the Kubernetes API down or trickling, each → the defined behaviour of design §3/§5, nothing lost,
and recovery once the fault clears. (Store unreachable at start: tests/adapters/test_stores.py,
tests/handlers/test_cli_bundle.py; API down without recovery: tests/ca_core/test_validators_*.py.)"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

import sentryca_client as client
from adapters.jwks_source import FAILED_FETCH_RETRY, JwksCache
from adapters.stores import FileBundleStore
from ca_core.config import JwksSettings
from ca_core.errors import Unavailable
from ca_core.spiffe_id import SpiffeId
from ca_core.validators import SignRequest
from ca_core.validators.jwks import JwksValidator
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.jwks_server import JwksServer, SigningKey, claims, jwks, self_signed_tls
from support.kube import Cluster
from support.kube_api_server import KubeApiServer
from support.pki import make_bundle, make_csr, snapshot, write_bundle

CA_ID = SpiffeId("localhost", "default", "dapr-sentry")
SUB = "spiffe://public/ns/prod/orders"


# --- the disk full while writing a file bundle ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs (a real filesystem that really fills up), unmounted afterwards. Needs root
    (CI runs as root); skipped where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); see the RLIMIT_FSIZE test")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write until the filesystem answers ENOSPC; returns the filler (delete it to free space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):  # big blocks, then what is left
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size) == size:
                    pass
    with pytest.raises(OSError) as e, open(disk / "probe", "wb", buffering=0) as f:
        f.write(b"x" * 8192)
    assert e.value.errno == errno.ENOSPC
    (disk / "probe").unlink(missing_ok=True)
    return filler


def test_disk_full_at_first_start_creates_no_ca_and_recovers(small_disk):
    store_dir = small_disk / "credentials"
    filler = fill(small_disk)
    ca = CertificateAuthority()
    with pytest.raises(Unavailable, match="disk full"):
        ca.start(ca_config(store_dir))
    assert not ca.running
    assert not (store_dir / "ca.crt").exists()  # no partial bundle is visible
    filler.unlink()
    ca.start(ca_config(store_dir))  # space again: the CA creates its bundle
    try:
        chan = client.channel(f"localhost:{ca.grpc_port}", (store_dir / "ca.crt").read_bytes())
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
        chan.close()
    finally:
        ca.stop(grace=0)


def test_disk_full_while_replacing_a_bundle_loses_nothing_and_recovers(small_disk):
    store_dir = small_disk / "credentials"
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    store = FileBundleStore(store_dir)
    before, current = snapshot(store_dir), store.load()
    replacement = make_bundle(datetime.now(UTC)).to_items()
    filler = fill(small_disk)
    with pytest.raises(Unavailable, match="disk full") as e:
        store.replace(replacement, current.version)
    assert e.value.reason == "store_unreachable"
    assert snapshot(store_dir) == before  # the old bundle, byte for byte
    assert store.load().version == current.version
    filler.unlink()
    assert store.replace(replacement, current.version)
    assert store.load().items == dict(replacement)


def test_file_size_limit_while_writing_is_unavailable_and_loses_nothing(tmp_path):
    """The same fault without root: RLIMIT_FSIZE in a subprocess makes every write past 200
    bytes fail (EFBIG) — a real filesystem limit, not a mocked store."""
    store_dir = tmp_path / "credentials"
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    before = snapshot(store_dir)
    replacement = tmp_path / "replacement.json"
    replacement.write_text(
        json.dumps({k: v.decode() for k, v in make_bundle(datetime.now(UTC)).to_items().items()})
    )
    script = f"""
import json, resource, signal, sys
from ca_core.errors import Unavailable
from adapters.stores import FileBundleStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = FileBundleStore({str(store_dir)!r})
current = store.load()
items = {{k: v.encode() for k, v in json.load(open({str(replacement)!r})).items()}}
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
try:
    store.replace(items, current.version)
except Unavailable as e:
    print("UNAVAILABLE", e.reason)
    sys.exit(0)
sys.exit("written despite the limit")
"""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "UNAVAILABLE store_unreachable"
    assert snapshot(store_dir) == before


# --- the JWKS server down, trickling, and back -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_jwks_server_down_then_back_recovers(tmp_path):
    key = SigningKey("key-1", "ES256")
    server = JwksServer(tmp_path / "tls", jwks(key)).start()
    clock = Clock()
    try:
        settings = JwksSettings(server.url, str(server.ca_pem), timedelta(minutes=1), timedelta(seconds=5))
        v = JwksValidator(JwksCache.from_settings(settings, clock), CA_ID)
        request = SignRequest("orders", "prod", make_csr(), token=key.token(claims(SUB, str(CA_ID))))
        server.status = 503  # down: answers 5xx
        with pytest.raises(Unavailable):
            v.validate(request)
        assert v.ready()[0] is False
        server.status = None  # back
        clock.t += FAILED_FETCH_RETRY  # without keys a failed fetch is retried after this
        assert v.validate(request).spiffe_id == SpiffeId("public", "prod", "orders")
        assert v.ready()[0] is True
        server.status = 503  # down again: the keys held stay in use
        clock.t += 120
        assert v.validate(request).spiffe_id.app_id == "orders"
    finally:
        server.stop()


class TricklingServer:
    """HTTPS on 127.0.0.1 that answers 200 with a long body, one byte every 50 ms."""

    def __init__(self, tls_dir: Path) -> None:
        self.ca_pem, cert, key = self_signed_tls(tls_dir)
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self._sock.getsockname()[1]}/jwks.json"

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), self._ctx.wrap_socket(raw, server_side=True) as conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                while not self._stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.mark.timeout(60)
def test_a_trickling_jwks_server_is_unavailable_within_the_timeout(tmp_path):
    """Each read gets a byte before the socket timeout, so only a deadline on the whole fetch
    ends it (100 000 bytes at 20/s would take over an hour)."""
    server = TricklingServer(tmp_path / "tls")
    try:
        settings = JwksSettings(server.url, str(server.ca_pem), timedelta(minutes=1), timedelta(seconds=1))
        v = JwksValidator(JwksCache.from_settings(settings, Clock()), CA_ID)
        request = SignRequest(
            "orders", "prod", make_csr(), token=SigningKey("k", "ES256").token(claims(SUB, "x"))
        )
        with pytest.raises(Unavailable, match="within the timeout"):
            v.validate(request)
    finally:
        server.stop()


# --- the Kubernetes API down and back, through the real gRPC server -----------------------------------


def test_kubernetes_api_down_is_unavailable_then_recovers_over_grpc(tmp_path):
    with KubeApiServer(bearer_token="admin") as api:
        cluster = Cluster(api)
        cluster.pod("prod", "orders")
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        ca = CertificateAuthority()
        ca.start(ca_config(tmp_path / "credentials", mode="kubernetes", kubeconfig=kubeconfig))
        chan = client.channel(f"localhost:{ca.grpc_port}", (tmp_path / "credentials" / "ca.crt").read_bytes())
        try:
            token = cluster.token("prod", "default", "orders")
            api.fail(503)
            with pytest.raises(grpc.RpcError) as e:
                client.sign(chan, make_csr(), "orders", "prod", token=token)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            api.clear_failures()
            resp = client.sign(chan, make_csr(), "orders", "prod", token=token)
            anchors = (tmp_path / "credentials" / "ca.crt").read_bytes()
            assert client.verify_response(resp, anchors).spiffe_id == SUB
        finally:
            chan.close()
            ca.stop(grace=0)
