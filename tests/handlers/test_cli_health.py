"""``sentryca --version`` and ``sentryca healthcheck`` against a real CA on loopback: ready,
alive, not ready, stopped, and bad usage, word for word."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

from adapters.stores import FileBundleStore
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.cli import SENTRYCA, serve
from support.pki import bundle_with_issuer_window

SRC = str(Path(__file__).resolve().parents[2] / "src")
DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``sentryca ARGS`` with this checkout's src/ and ``env`` added to this environment."""
    environment = os.environ | {"PYTHONPATH": SRC} | (env or {})
    return subprocess.run(
        [SENTRYCA, *args], capture_output=True, text=True, timeout=90, env=environment, check=False
    )


def test_version_names_the_package_and_the_wire_protocol():
    r = run("--version")
    assert (r.returncode, r.stderr) == (0, "")
    version = metadata.version("sentryca")
    assert r.stdout == f"sentryca {version} (wire protocol dapr.proto.sentry.v1.CA, as Dapr Sentry)\n"


def test_healthcheck_of_a_running_then_stopped_ca(tmp_path):
    served = serve(tmp_path)
    try:
        served.wait_ready()
        url = f"http://127.0.0.1:{served.healthz_port}/healthz"
        r = run("healthcheck", "--healthz-port", str(served.healthz_port))
        assert (r.returncode, r.stdout, r.stderr) == (0, f"ready: {url}\n", "")
        # the port from the server's own environment (as in the image: the Dockerfile's
        # HEALTHCHECK command, run as written); a setting it does not read is no error
        command = json.loads(re.search(r"^\s+CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)[1])
        assert command[:2] == ["sentryca", "healthcheck"]
        env = {"SENTRY_HEALTHZ_PORT": str(served.healthz_port), "SENTRY_PORT": "x"}
        r = run(*command[1:], env=env)
        live = f"http://127.0.0.1:{served.healthz_port}/livez"
        assert (r.returncode, r.stdout) == (0, f"alive: {live}\n"), r.stderr
    finally:
        served.stop()
    r = run("healthcheck", "--url", url)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"error: unreachable: {url}: [Errno 111] Connection refused\n"


def test_healthcheck_of_a_ca_that_is_not_ready(store_dir):
    now = datetime.now(UTC)
    items = bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now).to_items()
    items.pop("root.key")  # an expired issuer the CA cannot renew: up, but not serving gRPC
    assert FileBundleStore(store_dir).create(items)
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))
    try:
        url = f"http://127.0.0.1:{ca.healthz_port}/healthz"
        r = run("healthcheck", "--healthz-port", str(ca.healthz_port))
    finally:
        ca.stop(grace=0)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"error: not ready: {url}: HTTP 503; issuer: ")
    assert r.stderr.endswith("; grpc: not serving\n") and "; server_certificate: " in r.stderr
    assert "\n" not in r.stderr.rstrip("\n")


def test_healthcheck_usage_errors():
    r = run("healthcheck", "--url", "ftp://127.0.0.1/healthz")
    assert (r.returncode, r.stderr) == (
        2,
        "error: --url ftp://127.0.0.1/healthz: expected an http:// or https:// URL\n",
    )
    r = run("healthcheck", "--healthz-port", "99999")
    assert r.returncode == 2 and r.stderr.startswith("error: --healthz-port")
