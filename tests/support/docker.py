"""The Docker engine as the tests use it (tests/e2e/test_images.py, test_sam_invoke.py): the
engine must answer (``.ci/run`` installs and starts one), the local base images are made once per
machine (``make base-images``: deploy/local/base-images.sh), and a moto server listens on the
docker bridge's gateway address, the one host address containers reach."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import REPO_ROOT

PYTHON_IMAGE = "sentryca-local/python:3.11"  # stand-in for python:*-slim (deploy/local/base-images.sh)
LAMBDA_IMAGE = "sentryca-local/lambda-python:3.11"  # stand-in for public.ecr.aws/lambda/python
LOCAL_PYTHON = "3.11"  # the stand-ins' Python (Debian bookworm's)
# `make` in the checkout with this test's venv; the tools were installed before pytest ran (make test)
MAKE = [
    "make",
    "--no-print-directory",
    "-C",
    str(REPO_ROOT),
    f"VENV={sys.prefix}",
    "-o",
    f"{sys.prefix}/bin/python",
]
MAKE_TOOLS = ["-o", ".venv-tools/.installed"]  # as the Makefile names it (TOOLS)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert r.returncode == 0, (
            f"docker {' '.join(args)}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        )
    return r


def require_engine() -> None:
    """Fail (not skip: CI has one) when no Docker engine answers."""
    try:
        r = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except FileNotFoundError:
        raise AssertionError("no docker CLI: .ci/run installs docker.io and starts dockerd") from None
    assert r.returncode == 0, (
        "no Docker engine answers (start `dockerd --iptables=false`; .ci/run does):\n" + r.stderr
    )


def ensure_base_images() -> None:
    """The local base images, built once per machine (kept when present)."""
    r = subprocess.run([*MAKE, "base-images"], capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def bridge_gateway() -> str:
    """The docker bridge's gateway: the host address containers on the default network reach."""
    config = json.loads(docker("network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}").stdout)
    # an engine that does not report it gives the bridge its subnet's first address
    return config[0].get("Gateway") or str(ipaddress.ip_network(config[0]["Subnet"])[1])


@contextmanager
def moto_on_bridge() -> Iterator[str]:
    """A moto server on the bridge's gateway address (any free port); yields its URL."""
    from moto.server import ThreadedMotoServer

    from support.aws import start_serialised

    server = ThreadedMotoServer(ip_address=bridge_gateway(), port=0, verbose=False)
    start_serialised(server)
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    """This process's environment pointed at ``endpoint`` (moto) with dummy credentials."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SENTRY_", "MAKE", "MFLAGS"))}
    return keep | {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAM_CLI_TELEMETRY": "0",
    }


def sam_invoke(env: dict[str, str], fn: str, event: str, env_vars: Path) -> tuple[dict, str]:
    """(answer, container output) of `make sam-invoke` with the local stand-in image."""
    r = subprocess.run(
        [
            *MAKE,
            *MAKE_TOOLS,
            "sam-invoke",
            f"FN={fn}",
            f"EVENT={event}",
            f"ENV_VARS={env_vars}",
            f"INVOKE_IMAGE={LAMBDA_IMAGE}",
            f"LAMBDA_RUNTIME=python{LOCAL_PYTHON}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # sam local invoke prints the function's answer on stdout (after make's echo of the command)
    # and the container's output (logs, EMF) on stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr
