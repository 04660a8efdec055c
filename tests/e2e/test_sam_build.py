"""`sam build` packages the functions as template.yaml deploys them (src/Makefile): the handlers,
their dependencies for the Lambda platform, and the slim botocore data. The package built for this
machine's platform is then invoked with nothing else on its path, against S3 on a moto server.
Needs the SAM CLI that `make lint-template` installs into .venv-tools (as `make test` does)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.stores import open_store
from tools.local_invoke import load_template

from support import REPO_ROOT
from support.aws import TEST_BUCKET
from support.pki import make_bundle

SAM = REPO_ROOT / ".venv-tools" / "bin" / "sam"
TEMPLATE = load_template(REPO_ROOT / "template.yaml")
GLOBAL_ENV = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]

pytestmark = pytest.mark.slow

ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def sam_build(out: Path, function: str, **env: str) -> Path:
    assert SAM.exists(), "the SAM CLI is missing: run `make lint-template` (make test does) first"
    r = subprocess.run(
        [
            str(SAM),
            "build",
            function,
            "--template",
            str(REPO_ROOT / "template.yaml"),
            "--build-dir",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},  # as on most machines
            "SAM_CLI_TELEMETRY": "0",
            "PYTHON": sys.executable,
            **env,
        },
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out / function


def elf_machine(path: Path) -> str:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "other")


def test_the_deployed_package_is_built_for_the_templates_architecture(tmp_path):
    built = sam_build(tmp_path / "build", "ExpiryCheckFunction")
    # arm64 and the runtime on AWS are the parameters' defaults (make sam-invoke overrides them)
    assert TEMPLATE["Globals"]["Function"]["Architectures"] == [{"Ref": "LambdaArchitecture"}]
    assert TEMPLATE["Parameters"]["LambdaArchitecture"]["Default"] == "arm64"
    assert TEMPLATE["Globals"]["Function"]["Runtime"] == {"Ref": "LambdaRuntime"}
    runtime = TEMPLATE["Parameters"]["LambdaRuntime"]["Default"]
    assert (
        f"LAMBDA_PYTHON_VERSION ?= {runtime.removeprefix('python')}\n"
        in (REPO_ROOT / "src" / "Makefile").read_text()
    )
    assert elf_machine(built / "cryptography" / "hazmat" / "bindings" / "_rust.abi3.so") == "aarch64"
    assert GLOBAL_ENV["SENTRY_BOTOCORE_DATA"] == "/var/task/botocore-data"  # the package root
    assert (built / "botocore-data" / "endpoints.json").is_file()
    assert (built / "handlers" / "expiry_check.py").is_file() and not list(built.rglob("__pycache__"))
    assert not (built / "grpc").exists() and not (built / "kubernetes").exists()  # lazy, small


def test_the_package_runs_the_expiry_check_alone_on_the_slim_data(tmp_path, aws_env):
    arch = platform.machine()
    built = sam_build(
        tmp_path / "build",
        "ExpiryCheckFunction",
        LAMBDA_PLATFORMS=f"manylinux_2_28_{arch} manylinux2014_{arch}",
        LAMBDA_PYTHON_VERSION=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
    url = f"s3://{TEST_BUCKET}/sam-build/bundle.json"
    bundle = make_bundle(datetime.now(UTC))
    store = open_store(url)
    assert store.create(bundle.to_items())
    store.publish_public(store.load())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "PYTHON"))},
        **aws_env,
        "POWERTOOLS_SERVICE_NAME": "sam-build-test",
        "SENTRY_TRUST_DOMAIN": "localhost",
        "SENTRY_TRUST_BUNDLE_STORE": url,
        "SENTRY_BOTOCORE_DATA": str(built / "botocore-data"),
    }
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from handlers import expiry_check;"
        "import botocore, cryptography; assert botocore.__file__.startswith(sys.argv[1]), botocore.__file__;"
        "print(json.dumps(expiry_check.handler({}, None)))"
    )
    # -S: no site-packages, so only the package and the standard library are importable
    r = subprocess.run(
        [sys.executable, "-S", "-c", code, str(built)], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["coverage_days"] > 300
    assert "holds no botocore data" not in r.stdout + r.stderr
    assert {c["role"] for c in summary["certificates"]} == {"root", "issuer"}
