"""The ``sentryca`` console script, run as a user would: serve in a subprocess, then the client verbs."""

import re
import signal

import pytest
from cryptography import x509

from support.cli import EPHEMERAL_PORTS, serve
from support.cli import run_sentryca as run
from support.openssl import run_openssl
from support.pki import make_bundle, snapshot, write_bundle


@pytest.fixture
def served(tmp_path):
    ca = serve(tmp_path, "--mode", "standalone")
    yield ca.proc, ca.creds, ca.port
    if ca.proc.poll() is None:
        ca.proc.kill()
        ca.proc.wait()


def test_serve_request_sign_inspect_and_graceful_stop(served, tmp_path):
    proc, creds, port = served
    anchors = creds / "ca.crt"

    r = run(
        "request",
        "--id",
        "myapp",
        "--namespace",
        "default",
        "--server",
        f"localhost:{port}",
        "--trust-anchors",
        str(anchors),
        "--out",
        str(tmp_path / "out1"),
    )
    assert r.returncode == 0, r.stderr
    assert "spiffe://public/ns/default/myapp" in r.stdout
    out1 = tmp_path / "out1"
    assert (out1 / "tls.key").stat().st_mode & 0o077 == 0
    chain = x509.load_pem_x509_certificates((out1 / "tls.crt").read_bytes())
    assert len(chain) == 2 and (out1 / "ca.crt").read_bytes() == anchors.read_bytes()

    csr = tmp_path / "app.csr"
    assert (
        run_openssl(
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "app.key"),
            "-out",
            str(csr),
            "-subj",
            "/",
        ).returncode
        == 0
    )
    r = run(
        "sign",
        "--csr",
        str(csr),
        "--id",
        "orders",
        "--namespace",
        "prod",
        "--trust-domain",
        "example.org",
        "--token-validator",
        "insecure",
        "--server",
        f"127.0.0.1:{port}",
        "--trust-anchors",
        str(anchors),
        "--out",
        str(tmp_path / "out2"),
    )
    assert r.returncode == 0, r.stderr
    assert "spiffe://example.org/ns/prod/orders" in r.stdout
    assert not (tmp_path / "out2" / "tls.key").exists()

    r = run("inspect", "--issuer-credentials", str(creds))
    assert r.returncode == 0, r.stderr
    assert re.search(r"root\s+ok\s+36[45]d", r.stdout) and re.search(r"issuer\s+ok", r.stdout)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "CA stopped" in proc.stderr.read()


def test_refusals_and_bad_usage_have_exit_codes(served, tmp_path):
    _, creds, port = served
    common = ["--namespace", "default", "--server", f"localhost:{port}", "--out", str(tmp_path / "o")]
    r = run("request", "--id", "bad.id", "--trust-anchors", str(creds / "ca.crt"), *common)
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr and "'.'" in r.stderr
    r = run(
        "request",
        "--id",
        "ok",
        "--token-validator",
        "jwks",
        "--trust-anchors",
        str(creds / "ca.crt"),
        *common,
    )
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr
    r = run(
        "request",
        "--id",
        "ok",
        "--token-validator",
        "ldap",
        "--trust-anchors",
        str(creds / "ca.crt"),
        *common,
    )
    assert r.returncode == 2 and "unknown token validator" in r.stderr
    r = run("request", "--id", "ok", "--trust-anchors", str(tmp_path / "missing.crt"), *common)
    assert r.returncode == 2 and "missing.crt" in r.stderr
    other = tmp_path / "other"
    write_bundle(other, make_bundle())
    r = run("request", "--id", "ok", "--trust-anchors", str(other / "ca.crt"), "--timeout", "5", *common)
    assert r.returncode == 1 and "does not chain to --trust-anchors" in r.stderr  # the CA's TLS certificate


def test_serve_refuses_a_damaged_bundle_naming_the_file(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle())
    (creds / "issuer.key").unlink()
    before = snapshot(creds)
    r = run(
        "serve",
        "--issuer-credentials",
        str(creds),
        *EPHEMERAL_PORTS,
    )
    assert r.returncode == 1
    assert str(creds / "issuer.key") in r.stderr and "refusing to start" in r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(creds) == before


def test_serve_reports_bad_configuration(tmp_path):
    r = run("serve", "--issuer-credentials", str(tmp_path), "--workload-cert-ttl", "1d")
    assert r.returncode == 2 and "--workload-cert-ttl" in r.stderr and "Traceback" not in r.stderr


def test_inspect_an_empty_store(tmp_path):
    r = run("inspect", "--issuer-credentials", str(tmp_path / "none"))
    assert r.returncode == 1 and "empty" in r.stdout
