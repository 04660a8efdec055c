"""No private key is ever world-readable on disk after a store or CLI write, and no private key
or token ever appears in a log (issue 7, hardening 4; design §5 files 0600 / directory 0700)."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

import sentryca_client as client
from ca_core.config import JwksSettings
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.cli import EPHEMERAL_PORTS, SENTRYCA
from support.jwks_server import SigningKey, claims, jwks
from support.kube import Cluster
from support.kube_api_server import KubeApiServer
from support.pki import make_csr
from support.wait import wait_for_line

SUB = "spiffe://public/ns/prod/orders"
AUD = "spiffe://localhost/ns/default/dapr-sentry"


def key_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (symlinks followed) holding a PEM private key."""
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and b"PRIVATE KEY" in p.read_bytes():
                found.append(p)
    return found


def assert_private(root: Path, expected_at_least: int, *, store: bool = True) -> list[Path]:
    """Key files 0600 (no group/other bits); a store's directories also 0700 (design §5)."""
    keys = key_files(root)
    assert len(keys) >= expected_at_least, keys
    for p in keys:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} has mode {oct(mode)}"
        parent = stat.S_IMODE(p.resolve().parent.stat().st_mode)
        assert not store or parent & 0o077 == 0, f"{p.parent} has mode {oct(parent)}"
    return keys


def secrets_in(keys: list[Path]) -> list[str]:
    """The base64 body lines of each key: what a leaked key would look like in a log."""
    out = []
    for p in keys:
        out += [line for line in p.read_text().splitlines() if line and not line.startswith("-----")]
    return out


def test_start_sign_restart_stop_log_no_key_or_token_and_keep_keys_private(tmp_path, caplog):
    with KubeApiServer(bearer_token="admin-secret-token") as api:
        cluster = Cluster(api)
        cluster.pod("prod", "orders")
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        idp = SigningKey("key-1", "ES256")
        store = tmp_path / "credentials"
        cfg = ca_config(store, mode="kubernetes", kubeconfig=kubeconfig, log_level="debug")
        cfg = cfg.with_changes(jwks=JwksSettings(json.dumps(jwks(idp))))
        kube_token = cluster.token("prod", "default", "orders")
        jwt_good = idp.token(claims(SUB, AUD))
        jwt_bad = SigningKey("key-1", "ES256").token(claims(SUB, AUD))  # not the IdP's key
        tokens = [kube_token, jwt_good, jwt_bad, "not-a-jwt-but-secret-4711", "admin-secret-token"]
        caplog.set_level(logging.DEBUG)
        ca = CertificateAuthority()
        ca.start(cfg)
        try:
            chan = client.channel(f"localhost:{ca.grpc_port}", (store / "ca.crt").read_bytes())
            assert client.sign(chan, make_csr(), "orders", "prod", token=kube_token).workload_certificate
            assert client.sign(chan, make_csr(), "orders", "prod", token=jwt_good, token_validator=3)
            for token, validator in ((jwt_bad, 3), (tokens[3], 3), (tokens[3], 2), (jwt_good, 2)):
                with pytest.raises(Exception, match="StatusCode"):
                    client.sign(chan, make_csr(), "orders", "other", token=token, token_validator=validator)
            ca.restart(cfg)
            assert client.sign(chan, make_csr(), "orders", "prod", token=kube_token).workload_certificate
            chan.close()
        finally:
            ca.stop(grace=0)
    keys = assert_private(store, expected_at_least=2)  # issuer.key, root.key
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert len(caplog.records) > 10  # the run did log
    assert "PRIVATE KEY" not in text
    for secret in tokens + secrets_in(keys):
        assert secret not in text


def test_cli_writes_keep_keys_private_and_logs_clean(tmp_path):
    env = {**os.environ, "SENTRY_TOKEN": "cli-token-secret-0815"}
    creds = tmp_path / "creds"
    done = subprocess.run(
        [SENTRYCA, "bundle", "init", "--issuer-credentials", str(creds)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    exported = tmp_path / "exported"
    done = subprocess.run(
        [SENTRYCA, "bundle", "export", "--issuer-credentials", str(creds), "--out", str(exported)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    serve = subprocess.Popen(
        [
            SENTRYCA,
            "serve",
            "--issuer-credentials",
            str(creds),
            *EPHEMERAL_PORTS,
            "--mode",
            "standalone",
            "--log-level",
            "debug",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    banner = ""
    try:
        port, banner = _wait_for_port(serve)
        out = tmp_path / "workload"
        req = subprocess.run(
            [
                SENTRYCA,
                "request",
                "--id",
                "orders",
                "--namespace",
                "prod",
                "--server",
                f"localhost:{port}",
                "--trust-anchors",
                str(creds / "ca.crt"),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert req.returncode == 0, req.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        server_out, server_err = serve.communicate(timeout=30)
    keys = assert_private(creds, 2) + assert_private(exported, 2) + assert_private(out, 1, store=False)
    logs = "\n".join([banner, server_out, server_err, req.stdout, req.stderr, done.stdout, done.stderr])
    assert "PRIVATE KEY" not in logs
    for secret in ["cli-token-secret-0815", *secrets_in(keys)]:
        assert secret not in logs


def _wait_for_port(proc: subprocess.Popen) -> tuple[int, str]:
    """The gRPC port from the serve banner (stderr, as logged), reading until it appears."""
    import re

    seen: list[str] = []
    banner = wait_for_line(
        proc.stderr,
        lambda line: re.search(r"gRPC [^ ]+?:(\d+) \(TLS\)", line),
        "serve names its gRPC port",
        seen=seen,
    )
    return int(banner.group(1)), "".join(seen)
