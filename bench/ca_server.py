"""The CA under load, run as its own process by ``bench/run.py``.

Usage: ``ca_server.py CREDENTIALS_DIR LOG_LEVEL [canned | workers=N]``. Starts the CA on
127.0.0.1 with ephemeral ports (the bundle is generated in CREDENTIALS_DIR), prints one JSON
line ``{"port": ..., "pids": [...]}`` on stdout (every process serving: this one, and with
``workers=N`` the N worker processes of ``handlers.workers.Supervisor``), and stops when stdin
closes.

With ``canned``, ``Signer.prove`` and ``Signer.sign_proven`` (and ``Signer.sign``) are replaced by
ones that return what one call returned at start: the server then measures the
gRPC/TLS/servicer path without the validation and signing work.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name

from ca_core.config import load_config
from ca_core.service import Signer
from ca_core.validators import SignRequest
from handlers.heap import freeze_startup_heap
from handlers.logs import setup_logging
from handlers.server import CertificateAuthority
from handlers.workers import Supervisor


def can_signing(ca: CertificateAuthority) -> None:
    """Make every ``Signer.sign`` return one pre-signed answer (validation and CSR work skipped)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = CertificateSigningRequestBuilder().subject_name(Name([])).sign(key, hashes.SHA256())
    request = SignRequest("app", "default", csr.public_bytes(serialization.Encoding.PEM))
    proven = ca.signer.prove(request)
    answer = ca.signer.sign(request, datetime.now(UTC))
    # The servicer proves, then signs (Signer.prove, Signer.sign_proven): both are canned.
    Signer.prove = lambda self, request: proven  # type: ignore[method-assign]
    Signer.sign_proven = lambda self, request, validator, identity, now: answer  # type: ignore[method-assign]
    Signer.sign = lambda self, request, now: answer  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    credentials, log_level, *mode = argv
    workers = int(mode[0].split("=", 1)[1]) if mode and mode[0].startswith("workers=") else 1
    cfg = load_config(
        {
            "issuer_credentials": credentials,
            "listen_address": "127.0.0.1",
            "port": "0",
            "healthz_port": "0",
            "metrics_port": "0",
            "log_level": log_level,
            "rate_limit": "0",  # one caller on purpose: the per-caller limit is not what is measured
            "workers": str(workers),
        },
        {},
    )
    setup_logging(cfg.log_level, cfg.log_as_json)  # as `sentryca serve` does
    if workers > 1:
        supervisor = Supervisor(cfg)
        supervisor.start()
        try:
            pids = [os.getpid(), *supervisor.worker_pids]
            print(json.dumps({"port": supervisor.grpc_port, "pids": pids}), flush=True)
            sys.stdin.read()
        finally:
            supervisor.stop(grace=1.0)
        return 0
    ca = CertificateAuthority()
    ca.start(cfg)
    if mode == ["canned"]:
        can_signing(ca)
    freeze_startup_heap()  # as `sentryca serve` does
    try:
        print(json.dumps({"port": ca.grpc_port, "pids": [os.getpid()]}), flush=True)
        sys.stdin.read()  # returns at EOF: the parent is done
    finally:
        ca.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
