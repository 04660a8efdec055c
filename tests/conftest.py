"""Shared helpers: real keys, real CSRs, real bundles, and a real CA server on loopback."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import sentryca_client as client
from adapters.stores import FileBundleStore
from ca_core.bundle import TrustBundle, generate_bundle
from ca_core.certs import generate_issuer, generate_root
from ca_core.config import Config, load_config
from ca_core.keys import KeyAlgorithm
from ca_core.service import SigningPolicy
from ca_core.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# `sentryca serve` flags for a test server: every port picked free by the OS
EPHEMERAL_PORTS = ("--port", "0", "--healthz-port", "0", "--metrics-port", "0")


def make_key(kind: str = "p256"):
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    raise ValueError(kind)


def make_csr(key=None, subject: str = "ignored") -> bytes:
    """A PEM CSR for ``key`` (P-256 by default), with a subject and SANs the CA must ignore."""
    key = key or make_key()
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), critical=False)
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def make_bundle(
    now: datetime = NOW,
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256,
    root_lifetime: timedelta = timedelta(days=365),
    issuer_lifetime: timedelta = timedelta(days=365),
    trust_domain: str = "localhost",
) -> TrustBundle:
    policy = SigningPolicy(trust_domain=trust_domain)
    return generate_bundle(
        trust_domain,
        policy.ca_identity,
        now,
        algorithm=algorithm,
        root_lifetime=root_lifetime,
        issuer_lifetime=issuer_lifetime,
    )


def bundle_with_issuer_window(
    issuer_not_before: datetime, issuer_not_after: datetime, root_now: datetime
) -> TrustBundle:
    """A root valid around ``root_now`` (±1 year) and an issuer valid exactly in the given window."""
    root_key = make_key()
    root = generate_root(
        "localhost", root_key, root_now - timedelta(days=365), lifetime=timedelta(days=730 + 365)
    )
    issuer_key = make_key()
    issuer = generate_issuer(
        root,
        root_key,
        issuer_key,
        SpiffeId("localhost", "default", "dapr-sentry"),
        issuer_not_before,
        lifetime=issuer_not_after - issuer_not_before,
        backdate=timedelta(0),
    )
    return TrustBundle((root,), (issuer,), issuer_key, root_key)


SENTRYCA = str(Path(sys.executable).with_name("sentryca"))  # the CLI installed beside this Python


def run_sentryca(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    """Run ``sentryca ARGS`` to completion; ``env``: variables added to this process's environment."""
    return subprocess.run(
        [SENTRYCA, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | (env or {}),
    )


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def reissued(bundle: TrustBundle, now: datetime, lifetime: timedelta = timedelta(days=200)) -> TrustBundle:
    """The same root with a new issuer (what an operator's issuer renewal imports)."""
    key = make_key()
    issuer = generate_issuer(
        bundle.trust_anchors[0],
        bundle.root_key,
        key,
        SpiffeId("localhost", "default", "dapr-sentry"),
        now,
        lifetime=lifetime,
    )
    return TrustBundle(bundle.trust_anchors, (issuer,), key, bundle.root_key)


def write_bundle(directory: Path, bundle: TrustBundle) -> None:
    assert FileBundleStore(directory).create(bundle.to_items())


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes, to prove a refused start touched nothing."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def ca_config(store_dir: Path, **overrides: str) -> Config:
    """A Config for a test CA: ephemeral ports on loopback, file store in ``store_dir``."""
    flags = {
        "issuer_credentials": str(store_dir),
        "port": "0",
        "healthz_port": "0",
        "metrics_port": "0",
        "mode": "standalone",
        **overrides,
    }
    return load_config(flags, {})


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "credentials"


@pytest.fixture
def running_ca(store_dir: Path) -> Iterator:
    from handlers.server import CertificateAuthority

    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))
    try:
        yield ca
    finally:
        ca.stop(grace=0)


@pytest.fixture
def channel_to(store_dir: Path):
    """Open TLS channels to a running CA, trusting only its ca.crt; closed afterwards."""
    import sentryca_client as client

    opened = []

    def open_channel(ca):
        anchors = (store_dir / "ca.crt").read_bytes()
        chan = client.channel(f"localhost:{ca.grpc_port}", anchors)
        opened.append(chan)
        return chan

    yield open_channel
    for chan in opened:
        chan.close()


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl CLI is required (.ci/run installs it)")
    return path


def run_openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([openssl(), *args], input=input, capture_output=True, check=False)


# -- AWS stores: moto in server mode (real HTTP on loopback) -----------------------------------

TEST_BUCKET = "sentryca-test"


def _start_serialised(server) -> None:
    """Make moto answer one request at a time. Its conditional S3 put (If-None-Match / If-Match)
    checks and then writes without a lock, so two racing creators could both succeed, which real
    S3 never allows; serialising requests gives the fake the atomicity of the real service."""
    import threading

    from moto.moto_server import threaded_moto_server

    lock = threading.Lock()
    real_make_server = threaded_moto_server.make_server

    def make_server(host, port, app, *args, **kwargs):
        def one_at_a_time(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        return real_make_server(host, port, one_at_a_time, *args, **kwargs)

    threaded_moto_server.make_server = make_server
    try:
        server.start()  # builds its WSGI server through make_server, then serves
    finally:
        threaded_moto_server.make_server = real_make_server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 (any free port) with a versioned bucket TEST_BUCKET."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    _start_serialised(server)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_DUMMY_KEYS)
    s3.create_bucket(Bucket=TEST_BUCKET)
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield endpoint
    server.stop()


_DUMMY_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def slim_botocore_data(tmp_path_factory) -> Path:
    """botocore's data without prose, as the Lambda build ships it (tools.slim_botocore)."""
    from tools import slim_botocore

    out = tmp_path_factory.mktemp("botocore") / "data"
    slim_botocore.build(out)
    return out


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch) -> dict[str, str]:
    """Point boto3 (here and in subprocesses given the returned env) at the moto server."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


BUCKET = "sentryca-bundles-example"  # the bucket the sample events (events/) name


@pytest.fixture
def bucket(aws_env):
    """BUCKET on the moto server, versioned and emptied."""
    s3 = aws_client("s3", aws_env["AWS_ENDPOINT_URL"])
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for v in s3.list_object_versions(Bucket=BUCKET).get("Versions", []):
        s3.delete_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
    return s3


def aws_client(service: str, endpoint: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", **_DUMMY_KEYS)


# -- Kubernetes store: the loopback fake API server (support/kube_api_server.py) -------------------

KUBE_NAMESPACE = "sentryca-test"


@dataclass
class KubeApi:
    """A running fake API server and a kubeconfig file pointing at it."""

    server: Any
    kubeconfig: str


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory) -> Iterator[KubeApi]:
    """One fake Kubernetes API server on 127.0.0.1 for the session; it requires the bearer token
    of the kubeconfig. Tests that force failures start their own server instead."""
    from support.kube_api_server import KubeApiServer

    with KubeApiServer(bearer_token="sentryca-test-token") as server:
        path = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        yield KubeApi(server, str(path))


# --- sentryca serve as a subprocess --------------------------------------------------------


class Served:
    """A ``sentryca serve`` subprocess started by :func:`serve`."""

    def __init__(self, proc: subprocess.Popen, creds: Path, port: int, healthz: int, metrics: int) -> None:
        self.proc, self.creds, self.port = proc, creds, port
        self.healthz_port, self.metrics_port = healthz, metrics

    @functools.cached_property
    def anchors(self) -> bytes:
        """The trust anchors of a file store in ``creds`` (the default store)."""
        return (self.creds / "ca.crt").read_bytes()

    @functools.cached_property
    def channel(self) -> grpc.Channel:
        return client.channel(f"localhost:{self.port}", self.anchors)

    def sign(self, app_id: str, ns: str, **kw):
        return client.sign(self.channel, make_csr(), app_id, ns, timeout=20, **kw)

    def refused(self, app_id: str, ns: str, **kw) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as e:
            self.sign(app_id, ns, **kw)
        return e.value.code(), e.value.details()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def spiffe_id(self, app_id: str, ns: str, **kw) -> str:
        return client.verify_response(self.sign(app_id, ns, **kw), self.anchors).spiffe_id

    def healthz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_ready(self, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            status, body = self.healthz()
            if status == 200 or time.monotonic() > deadline:
                assert status == 200, body
                return body
            time.sleep(0.1)

    def stop(self) -> str:
        """Stop the CA and return everything it logged."""
        if "channel" in vars(self):
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def serve(tmp_path: Path, *args: str, env: dict | None = None) -> Served:
    """Start ``sentryca serve ARGS`` on ephemeral ports with a file store in ``tmp_path/creds``
    (unless ARGS name another store); returns once it says where it serves. ``env``: variables
    added to this process's environment (KUBERNETES_SERVICE_HOST removed)."""
    creds = tmp_path / "creds"
    environment = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    environment |= {"SENTRY_HEALTHZ_PORT": "0", "SENTRY_METRICS_PORT": "0"} | (env or {})
    proc = subprocess.Popen(
        [SENTRYCA, "serve", "--issuer-credentials", str(creds), "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    lines: list[str] = []
    port = healthz = metrics = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and healthz is None:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"metrics :(\d+)", line):
            metrics = int(m.group(1))
        if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r"Health:\s+http://[^:]+:(\d+)/healthz", line):
            healthz = int(m.group(1))
    if port is None or healthz is None or metrics is None:
        proc.kill()
        raise AssertionError("sentryca serve did not start:\n" + "".join(lines) + proc.stderr.read())
    return Served(proc, creds, port, healthz, metrics)
