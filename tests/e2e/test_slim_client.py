"""The slim client distribution (clients/python, design §10.1) as a user gets it: its wheel built
from this checkout, installed with only its declared dependencies into a fresh venv that sees
nothing of this repository, where the server's packages and libraries cannot be imported; from
there the library call (``request_x509_svid`` with ``aws_iam=True``, against the STS double) and
the ``sentryca-client request`` script (INSECURE) obtain SVIDs from a running CA, checked here with
OpenSSL and the spiffe package against the CA's own trust anchors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support import REPO_ROOT
from support.cli import serve
from support.openssl import run_openssl
from support.sts_double import StsDouble

pytestmark = pytest.mark.slow

ACCOUNT = "111122223333"
KEYS = {"AKIDORDERS": ("secret-orders-key", f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-task/i-0abc")}
SERVER_ONLY = ("ca_core", "handlers", "adapters", "tools", "boto3", "kubernetes", "aws_lambda_powertools")
PACKAGED = ("sentryca_client", "sentryca_proto")
# what `python -m venv` puts into every venv: not part of either installation
VENV_OWN = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth")


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would show the venv this repository's sources
    or the shared venv (PYTHONPATH, VIRTUAL_ENV) or AWS credentials of the machine."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("AWS_")
    }
    return keep | extra


def _size(site: Path) -> int:
    """Bytes of every file under ``site`` but the venv's own tools (:data:`VENV_OWN`)."""
    total = 0
    for entry in site.iterdir():
        if entry.name.split("-")[0] in VENV_OWN or entry.name in VENV_OWN:
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def _installed_size(name: str) -> int:
    """Bytes of the files the distributions in ``name``'s run-time closure (no extras) installed
    in this test's venv, as their RECORDs give them: a lower bound of the full install's
    footprint (RECORD gives no size for the bytecode pip compiles, which :func:`_size` counts)."""
    seen: set[str] = set()
    todo, total = [name], 0
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        total += sum(f.size or 0 for f in dist.files or ())
        for req in map(Requirement, dist.requires or ()):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return total


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    """(the venv's python, its bin directory, its site-packages) with the client wheel and its
    declared dependencies (the aws extra's too) installed, and nothing else."""
    work = tmp_path_factory.mktemp("slim")
    # setuptools' build folder outside the checkout: a stale one could carry deleted modules
    cfg = work / "build.cfg"
    cfg.write_text(f"[build]\nbuild_base = {work / 'build'}\n")
    env = _clean_env(DIST_EXTRA_CONFIG=str(cfg), PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        work / "dist",
        REPO_ROOT / "clients" / "python",
        env=env,
    )
    (wheel,) = (work / "dist").glob("sentryca_client-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packaged = {n for n in z.namelist() if ".dist-info/" not in n}
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    sources = {
        p.relative_to(REPO_ROOT / "src").as_posix()
        for pkg in PACKAGED
        for p in (REPO_ROOT / "src" / pkg).rglob("*")
        if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }
    assert packaged == sources  # exactly the two packages' files, none stale, none missing
    assert "sentryca-client = sentryca_client.cli:main" in entry_points
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", venv, env=env)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", f"{wheel}[aws]", env=env)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", env=env).strip())
    return python, venv / "bin", site


def test_the_slim_install_has_none_of_the_server(slim):
    python, _, site = slim
    probe = (
        "import importlib.util, json, sentryca_client, sentryca_client.aws_iam, sentryca_client.cli; "
        f"print(json.dumps({{'found': [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)], "
        "'client': sentryca_client.__file__}))"
    )
    seen = json.loads(_run(python, "-I", "-c", probe, env=_clean_env()))
    assert seen["found"] == []
    assert Path(seen["client"]).is_relative_to(site)  # the installed copy, not this checkout's
    installed = json.loads(_run(python, "-m", "pip", "list", "--format", "json", env=_clean_env()))
    names = {d["name"].lower() for d in installed} - {"pip", "setuptools"}
    assert "sentryca" not in names and {"sentryca-client", "botocore", "grpcio", "cryptography"} <= names
    slim_bytes, full_bytes = _size(site), _installed_size("sentryca")
    assert slim_bytes < full_bytes / 2, (slim_bytes, full_bytes)


def test_the_slim_install_gets_svids_from_a_running_ca(slim, tmp_path):
    python, bin_dir, _ = slim
    # INSECURE (standalone without other validators): the console script
    ca = serve(tmp_path, "--mode", "standalone")
    try:
        ca.wait_ready()
        out = tmp_path / "insecure"
        printed = _run(
            bin_dir / "sentryca-client", "request", "--id", "web", "--namespace", "default",
            "--server", f"localhost:{ca.port}", "--trust-anchors", ca.creds / "ca.crt", "--out", out,
            env=_clean_env(),
        )  # fmt: skip
    finally:
        ca.stop()
    assert "spiffe://public/ns/default/web" in printed
    _check_svid(tmp_path, out, ca.creds / "ca.crt", "spiffe://public/ns/default/web")
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600

    # AWS IAM through the library call, the CA's SPIFFE ID read from its TLS certificate
    with StsDouble(KEYS) as sts:
        config = tmp_path / "config.yaml"
        config.write_text(
            "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n"
            f"          stsEndpoint: {sts.endpoint}\n          requestTimeout: 5s\n"
            f'          allowedAccounts: ["{ACCOUNT}"]\n          rules:\n'
            "            - {name: orders, role: orders-task, namespace: prod, appId: orders, "
            "trustDomain: example.org}\n"
        )
        ca = serve(tmp_path, "--mode", "standalone", "--config", str(config))  # the same store
        out = tmp_path / "iam"
        script = (
            "import sys; from pathlib import Path; from sentryca_client import request_x509_svid\n"
            "server, anchors, sts, out = sys.argv[1:]\n"
            "svid = request_x509_svid(server, Path(anchors).read_bytes(), 'orders', 'prod',\n"
            "    trust_domain='example.org', aws_iam=True, aws_sts_endpoint=sts)\n"
            "Path(out).mkdir()\n"
            "Path(out, 'tls.key').write_bytes(svid.private_key_pem)\n"
            "Path(out, 'tls.crt').write_bytes(svid.chain_pem)\n"
            "Path(out, 'ca.crt').write_bytes(svid.trust_anchors_pem)\n"
            "print(svid.spiffe_id)\n"
        )
        aws = _clean_env(
            AWS_ACCESS_KEY_ID="AKIDORDERS",
            AWS_SECRET_ACCESS_KEY="secret-orders-key",
            AWS_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        )
        try:
            assert ca.wait_ready()["validators"] == ["aws_iam"]
            printed = _run(
                python, "-I", "-c", script, f"localhost:{ca.port}", ca.creds / "ca.crt", sts.endpoint, out,
                env=aws,
            )  # fmt: skip
            assert len(sts.requests) == 1
        finally:
            log = ca.stop()
    assert printed.strip() == "spiffe://example.org/ns/prod/orders"
    _check_svid(tmp_path, out, ca.creds / "ca.crt", "spiffe://example.org/ns/prod/orders")
    assert "(aws_iam rule orders)" in log and "secret-orders-key" not in log


def _check_svid(tmp_path: Path, out: Path, anchors: Path, spiffe_id: str) -> None:
    """``out``'s tls.crt verifies with OpenSSL to the CA's own ``anchors``, ca.crt is those
    anchors, and the spiffe package parses the SVID with its key as ``spiffe_id``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from spiffe import X509Svid

    assert (out / "ca.crt").read_bytes().strip() == anchors.read_bytes().strip()
    leaf = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())[0]
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    verified = run_openssl(
        "verify", "-CAfile", str(anchors), "-untrusted", str(out / "tls.crt"), str(tmp_path / "leaf.pem")
    )
    assert verified.returncode == 0, verified.stderr
    svid = X509Svid.parse((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes())
    assert str(svid.spiffe_id) == spiffe_id
