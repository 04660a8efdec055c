"""The container images, built by `make image` from the Dockerfile and run: the server signs a
CSR through its published port for the project's client, answers /healthz, runs as its non-root
user, carries no pip or compiler, and stops gracefully on SIGTERM; the function image runs the
expiry check in the Lambda runtime interface emulator against moto. The base images are the
local stand-ins (deploy/local/base-images.sh; no image registry is needed), made once per
machine."""

from __future__ import annotations

import json
import platform
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography import x509

from adapters.stores import open_store

from support import REPO_ROOT
from support.aws import BUCKET, aws_client, emitted
from support.cli import run_sentryca
from support.docker import (
    LAMBDA_IMAGE,
    LOCAL_PYTHON,
    MAKE,
    PYTHON_IMAGE,
    aws_env,
    docker,
    ensure_base_images,
    moto_on_bridge,
    require_engine,
)
from support.pki import make_bundle
from support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE = "sentryca-test"
SAM_RAPID = REPO_ROOT / ".venv-tools" / "lib"  # the emulator ships inside the SAM CLI (samcli/local/rapid)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    require_engine()
    ensure_base_images()
    r = subprocess.run(
        [
            *MAKE,
            "image",
            f"IMAGE={IMAGE}",
            f"PYTHON_VERSION={LOCAL_PYTHON}",
            f"BASE_IMAGE={PYTHON_IMAGE}",
            f"LAMBDA_BASE_IMAGE={LAMBDA_IMAGE}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"server": f"{IMAGE}:server", "lambda": f"{IMAGE}:lambda"}


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed after it."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "--force", name, check=False)


def published(name: str, port: int) -> int:
    out = docker("port", name, f"{port}/tcp").stdout.splitlines()
    return int(next(line for line in out if line.startswith("127.0.0.1:")).rsplit(":", 1)[1])


def healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_the_server_image_signs_through_its_port_as_non_root_and_stops_gracefully(
    images, container, tmp_path
):
    name = f"sentryca-test-{uuid.uuid4().hex[:8]}"
    container.append(name)
    # the file store (the default) in the image's working directory; the INSECURE validator
    # needs the explicit opt-in on a network address (SENTRY_LISTEN_ADDRESS=0.0.0.0 in the image)
    docker(
        "run", "--detach", "--name", name, "-p", "127.0.0.1::50001", "-p", "127.0.0.1::8080",
        images["server"], "serve", "--allow-insecure-on-network", "true",
    )  # fmt: skip
    port, health_port = published(name, 50001), published(name, 8080)
    health = wait_until(lambda: healthz(health_port), lambda: docker("logs", name).stderr[-3000:], timeout=60)
    assert health["ready"] is True

    # the trust anchors the CA generated (ca.crt is a link into the store's current generation)
    (tmp_path / "ca.crt").write_text(docker("exec", name, "cat", ".sentry/credentials/ca.crt").stdout)
    r = run_sentryca(
        "request", "--id", "myapp", "--namespace", "default", "--server", f"127.0.0.1:{port}",
        "--trust-anchors", str(tmp_path / "ca.crt"), "--out", str(tmp_path / "certs"),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    leaf = x509.load_pem_x509_certificates((tmp_path / "certs" / "tls.crt").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://public/ns/default/myapp"]

    # the CA is the container's first process, as its non-root user; the image's HEALTHCHECK works
    status = docker("exec", name, "cat", "/proc/1/status").stdout
    assert "\nUid:\t10001\t10001\t10001\t10001\n" in status, status
    assert "sentryca" in docker("exec", name, "cat", "/proc/1/cmdline").stdout
    assert docker("exec", name, "sentryca", "healthcheck", "--live", check=False).returncode == 0

    docker("stop", "--time", "30", name)  # SIGTERM, then SIGKILL after 30 s
    state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
    logs = docker("logs", name)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, logs.stderr[-3000:])
    assert "CA stopped" in logs.stdout + logs.stderr


def tools_in(image: str) -> str:
    """What of pip, a compiler and a package installer the image has (empty: none)."""
    script = (
        "for t in pip pip3 gcc cc c++ make apt-get; do command -v $t || true; done;"
        "python3 -c 'import pip' 2>/dev/null && echo 'import pip';"
        "python3 -c 'import setuptools' 2>/dev/null && echo 'import setuptools';"
        "/opt/sentryca/bin/python -c 'import pip' 2>/dev/null && echo 'venv pip'; true"
    )
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout.strip()


def test_the_server_image_carries_no_build_tooling(images):
    # apt-get is Debian's and stays in a Debian-based image; everything else is absent
    assert tools_in(images["server"]).splitlines() in ([], ["/usr/bin/apt-get"])
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", images["server"]).stdout)
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["sentryca"]
    assert config["Healthcheck"]["Test"] == ["CMD", "sentryca", "healthcheck", "--live"]


def test_the_function_image_runs_the_expiry_check_in_the_runtime_emulator(images, container):
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", images["lambda"]).stdout)
    assert config["User"] == "1000:1000" and config["Cmd"] == ["handlers.expiry_check.handler"]
    assert not [t for t in tools_in(images["lambda"]).splitlines() if "apt-get" not in t]
    rapid = next(SAM_RAPID.glob("python3*/site-packages/samcli/local/rapid"))
    rie = {"x86_64": "aws-lambda-rie-x86_64", "aarch64": "aws-lambda-rie-arm64"}[platform.machine()]
    assert (rapid / rie).is_file()
    with moto_on_bridge() as endpoint:
        env = aws_env(endpoint)
        s3 = aws_client("s3", endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        url = f"s3://{BUCKET}/image-test/bundle.json"
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            store = open_store(url)
            bundle = make_bundle(datetime.now(UTC))
            assert store.create(bundle.to_items())
            store.publish_public(store.load())
        name = f"sentryca-fn-{uuid.uuid4().hex[:8]}"
        container.append(name)
        docker(
            "run", "--detach", "--name", name, "-p", "127.0.0.1::8080", "-v", f"{rapid}:/var/rapid:ro",
            "--entrypoint", f"/var/rapid/{rie}",
            *(f"--env={k}={env[k]}" for k in env if k.startswith("AWS_")),
            "--env=SENTRY_TRUST_DOMAIN=localhost", f"--env=SENTRY_TRUST_BUNDLE_STORE={url}",
            "--env=POWERTOOLS_SERVICE_NAME=image-test", "--env=_HANDLER=handlers.expiry_check.handler",
            images["lambda"], "/var/runtime/bootstrap",
        )  # fmt: skip
        port = published(name, 8080)

        def invoke() -> dict | None:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations",
                data=b"{}",
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        summary = wait_until(invoke, lambda: docker("logs", name).stderr[-3000:], timeout=60, interval=0.5)
        logs = docker("logs", name)
    assert summary["status"] == "ok" and summary["store"] == url, summary
    assert {c["role"] for c in summary["certificates"]} == {"root", "issuer"}
    metrics = emitted(logs.stdout + logs.stderr)
    assert {dims for _, dims, _ in metrics["DaysToExpiry"]} == {("service", "Role", "Subject")}
    assert metrics["SigningCoverageDays"][0][2]["SigningCoverageDays"] == [summary["coverage_days"]]
    # the slim botocore data of the package is what botocore read
    assert "holds no botocore data" not in logs.stdout + logs.stderr
