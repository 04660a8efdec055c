"""The OpenSSL CLI, an independent verifier of what the CA issues."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl CLI is required (.ci/run installs it)")
    return path


def run_openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([openssl(), *args], input=input, capture_output=True, check=False)
