"""Fixtures only: a file store directory, a real CA server on loopback and TLS channels to it,
moto in server mode, fresh stores of each kind for the CLI, the slim botocore data, the loopback
AWS Private CA double and the loopback Kubernetes API server. Every
helper they share with the tests lives in tests/support/ (imported as ``support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.aws import BUCKET, DUMMY_KEYS, TEST_BUCKET, aws_client, start_serialised
from support.ca import ca_config
from support.kube import KubeApi


@pytest.fixture
def double(monkeypatch) -> Iterator:
    """A loopback AWS Private CA (``support.acmpca_double.AcmPcaDouble``) that the SDK reaches
    with test credentials, one request per try (``AWS_MAX_ATTEMPTS=1``: the adapter's own
    retries are what the tests count)."""
    from support.acmpca_double import AcmPcaDouble

    with AcmPcaDouble() as d:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ACM_PCA", d.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        yield d


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


# -- AWS stores: moto in server mode (real HTTP on loopback) -----------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 (any free port) with a versioned bucket TEST_BUCKET."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    start_serialised(server)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **DUMMY_KEYS)
    s3.create_bucket(Bucket=TEST_BUCKET)
    s3.put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield endpoint
    server.stop()


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


@pytest.fixture(params=["file", "s3", "secretsmanager"])
def store_url_env(request, tmp_path) -> tuple[str, dict[str, str]]:
    """(URL, environment for the CLI) of a fresh, empty store of each kind the operator verbs
    are tested on: a directory, S3 and Secrets Manager on the moto server."""
    import uuid

    tag = uuid.uuid4().hex[:10]
    if request.param == "file":
        return f"file://{tmp_path / tag}", {}
    env = request.getfixturevalue("aws_env")
    if request.param == "s3":
        return f"s3://{TEST_BUCKET}/cli/{tag}.json", env
    return f"secretsmanager://sentryca/cli-{tag}", env


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


# -- Kubernetes store: the loopback fake API server (support/kube_api_server.py) ---------------


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory) -> Iterator[KubeApi]:
    """One fake Kubernetes API server on 127.0.0.1 for the session; it requires the bearer token
    of the kubeconfig. Tests that force failures start their own server instead."""
    from support.kube_api_server import KubeApiServer

    with KubeApiServer(bearer_token="sentryca-test-token") as server:
        path = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        yield KubeApi(server, str(path))
